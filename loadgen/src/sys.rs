//! Thin, safe wrappers over the few libc calls the generators need.
//!
//! std's socket types cannot do non-blocking `connect`, bind-before-connect
//! with `IP_BIND_ADDRESS_NO_PORT`, `SO_REUSEPORT`, `sendmmsg`/`recvmmsg` or
//! epoll, so everything goes through libc here, in one place, and the mode
//! modules only see `OwnedFd`s and `io::Result`s. All sockets are created
//! non-blocking and close-on-exec.

use std::{
    io,
    mem::{size_of, MaybeUninit},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use libc::{c_int, c_void, sockaddr_storage, socklen_t};

/// Turns a `-1`-on-error return into an `io::Result`.
pub fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A socket address in the kernel's representation.
#[derive(Clone, Copy)]
pub struct RawAddr {
    pub storage: sockaddr_storage,
    pub len: socklen_t,
}

impl RawAddr {
    pub fn empty() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
        let storage = unsafe { MaybeUninit::<sockaddr_storage>::zeroed().assume_init() };
        RawAddr {
            storage,
            len: size_of::<sockaddr_storage>() as socklen_t,
        }
    }

    pub fn from_std(addr: &SocketAddr) -> Self {
        let mut raw = RawAddr::empty();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write(&mut raw.storage as *mut _ as *mut libc::sockaddr_in, sin)
                };
                raw.len = size_of::<libc::sockaddr_in>() as socklen_t;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    std::ptr::write(&mut raw.storage as *mut _ as *mut libc::sockaddr_in6, sin6)
                };
                raw.len = size_of::<libc::sockaddr_in6>() as socklen_t;
            }
        }
        raw
    }

    pub fn socket_addr(&self) -> Option<SocketAddr> {
        to_std(&self.storage)
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        &self.storage as *const _ as *const libc::sockaddr
    }
}

/// Converts a kernel socket address (as filled in by accept/recvmmsg) to std.
pub fn to_std(storage: &sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn family(ip: &IpAddr) -> c_int {
    match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    }
}

/// A new non-blocking, close-on-exec socket of `ty` (SOCK_STREAM/SOCK_DGRAM)
/// for the address family of `ip`.
pub fn socket(ip: &IpAddr, ty: c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is owned by nobody else.
    let fd =
        cvt(unsafe { libc::socket(family(ip), ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just created and is valid.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn set_int_opt(fd: &impl AsRawFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: value lives across the call and its size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const c_int as *const c_void,
            size_of::<c_int>() as socklen_t,
        )
    })
    .map(drop)
}

pub fn bind(fd: &impl AsRawFd, addr: &SocketAddr) -> io::Result<()> {
    let raw = RawAddr::from_std(addr);
    // SAFETY: raw holds a valid address of raw.len bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), raw.as_ptr(), raw.len) }).map(drop)
}

pub fn listen(fd: &impl AsRawFd, backlog: c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// Starts a connect on a non-blocking socket: `Ok(true)` if it completed at
/// once, `Ok(false)` if it is in progress (EINPROGRESS; completion is
/// signalled by EPOLLOUT, the result read with [`take_error`]).
pub fn connect(fd: &impl AsRawFd, addr: &SocketAddr) -> io::Result<bool> {
    let raw = RawAddr::from_std(addr);
    // SAFETY: raw holds a valid address of raw.len bytes.
    match cvt(unsafe { libc::connect(fd.as_raw_fd(), raw.as_ptr(), raw.len) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Accepts one connection; `Ok(None)` when the queue is empty.
pub fn accept(fd: &impl AsRawFd) -> io::Result<Option<(OwnedFd, Option<SocketAddr>)>> {
    let mut raw = RawAddr::empty();
    // SAFETY: raw.storage has raw.len bytes of room for the peer address.
    let ret = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            &mut raw.storage as *mut _ as *mut libc::sockaddr,
            &mut raw.len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    match cvt(ret) {
        // SAFETY: accept4 returned a new descriptor that we now own.
        Ok(new) => Ok(Some((
            unsafe { OwnedFd::from_raw_fd(new) },
            raw.socket_addr(),
        ))),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn local_addr(fd: &impl AsRawFd) -> io::Result<SocketAddr> {
    let mut raw = RawAddr::empty();
    // SAFETY: raw.storage has raw.len bytes of room.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            &mut raw.storage as *mut _ as *mut libc::sockaddr,
            &mut raw.len,
        )
    })?;
    raw.socket_addr()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))
}

/// The pending socket error (SO_ERROR), which is how a non-blocking connect
/// reports its outcome.
pub fn take_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut value: c_int = 0;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: value/len describe a c_int-sized buffer.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut value as *mut c_int as *mut c_void,
            &mut len,
        )
    })?;
    Ok((value != 0).then(|| io::Error::from_raw_os_error(value)))
}

pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes of writes.
    cvt_size(unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut c_void, buf.len(), 0) })
}

/// `send` with MSG_NOSIGNAL: a peer reset must be an EPIPE, not a SIGPIPE.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes of reads.
    cvt_size(unsafe {
        libc::send(
            fd,
            buf.as_ptr() as *const c_void,
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    })
}

/// Sends our FIN (half close) while the socket stays readable.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map(drop)
}

/// Opens a TCP socket towards `target`, optionally bound to `bind_ip` first,
/// and starts connecting. Returns the socket and whether it is already
/// connected.
pub fn tcp_connect(target: &SocketAddr, bind_ip: Option<IpAddr>) -> io::Result<(OwnedFd, bool)> {
    let fd = socket(&target.ip(), libc::SOCK_STREAM)?;
    if let Some(ip) = bind_ip {
        // Without IP_BIND_ADDRESS_NO_PORT, bind(port 0) reserves an ephemeral
        // port for *every* destination, capping a source IP at ~28k sockets
        // in total; with it the port is chosen at connect() from the full
        // 4-tuple, exactly as an unbound socket would. (Best effort: an old
        // kernel without it just behaves the first way.)
        let _ = set_int_opt(&fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        bind(&fd, &SocketAddr::new(ip, 0))?;
    }
    let connected = connect(&fd, target)?;
    Ok((fd, connected))
}

/// Like [`tcp_connect`] from an explicit source `port`. SO_REUSEADDR lets
/// the bind succeed over TIME_WAIT leftovers of an earlier run on that port;
/// a clash of the full 4-tuple then shows as EADDRNOTAVAIL from connect.
pub fn tcp_connect_from_port(
    target: &SocketAddr,
    bind_ip: Option<IpAddr>,
    port: u16,
) -> io::Result<(OwnedFd, bool)> {
    let fd = socket(&target.ip(), libc::SOCK_STREAM)?;
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let ip = bind_ip.unwrap_or(match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    bind(&fd, &SocketAddr::new(ip, port))?;
    let connected = connect(&fd, target)?;
    Ok((fd, connected))
}

/// The namespace's ephemeral port range (net.ipv4.ip_local_port_range;
/// /proc/sys/net shows the namespace of the thread that reads it).
pub fn local_port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

/// Opens a bound listening TCP socket. `reuse_port` lets several threads
/// each own a listener on the same address (the kernel spreads connections
/// over them by 4-tuple hash).
pub fn tcp_listen(addr: &SocketAddr, backlog: c_int, reuse_port: bool) -> io::Result<OwnedFd> {
    let fd = socket(&addr.ip(), libc::SOCK_STREAM)?;
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuse_port {
        set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    bind(&fd, addr)?;
    listen(&fd, backlog)?;
    Ok(fd)
}

/// Disables Nagle: request/response traffic must not wait for delayed ACKs.
pub fn set_nodelay(fd: &impl AsRawFd) -> io::Result<()> {
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// epoll, level-triggered. Tokens are opaque `u64`s chosen by the caller.
pub struct Epoll {
    fd: OwnedFd,
}

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; we own the returned descriptor.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            // SAFETY: fd is a fresh valid descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ctl(&self, op: c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Waits up to `timeout`; an interrupting signal counts as "no events"
    /// so callers re-check their stop conditions.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        // Round up so a 0.3 ms remainder does not become a busy 0 ms poll.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as c_int;
        let cap = events.len().min(i32::MAX as usize) as c_int;
        // SAFETY: events has room for `cap` entries.
        let ret = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), cap, ms) };
        match cvt(ret) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// A zeroed event array for [`Epoll::wait`], allocated once per loop.
pub fn event_buffer(len: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; len]
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (one socket is one
/// descriptor, so this is the ceiling on connections per process).
/// Returns the resulting soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to fill.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: raised is a valid rlimit.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) })?;
        return Ok(raised.rlim_cur);
    }
    Ok(lim.rlim_cur)
}

/// The current soft RLIMIT_NOFILE.
pub fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// Symbolic name of an errno for the JSON error maps (the handful a network
/// generator meets; anything else is "errno N").
pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::EAGAIN => "EAGAIN",
        libc::EPIPE => "EPIPE",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EINVAL => "EINVAL",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENETDOWN => "ENETDOWN",
        libc::EHOSTDOWN => "EHOSTDOWN",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}

/// Name for an `io::Error`: its errno name, or its kind for synthetic ones.
pub fn error_name(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => errno_name(code),
        None => format!("{:?}", err.kind()),
    }
}

/// Waits until `fd` is writable (or `timeout` passes): the back-off when a
/// UDP socket's send buffer is full.
pub fn wait_writable(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, 1000) as c_int;
    // SAFETY: pfd is one valid pollfd. The result does not matter: the
    // caller simply tries again.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Sleeps the calling thread (for pacing; `thread::sleep` is an hrtimer
/// nanosleep, precise to tens of microseconds).
pub fn sleep(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}
