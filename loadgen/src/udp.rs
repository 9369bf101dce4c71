//! `udp-sink` / `udp-flood`: UDP packets per second with `sendmmsg` /
//! `recvmmsg`.
//!
//! The flood sends one preallocated payload through a fixed array of
//! `mmsghdr`s (every entry points at the same buffer; the sockets are
//! connected, so no address per message), round-robin over `--flows`
//! sockets, i.e. distinct source ports and distinct NAT mappings. `--rate`
//! paces to a fixed offered load in bursts of at most ~1 ms worth of
//! packets, which is what measuring CPU per packet at a given rate needs.
//! The sink receives in batches into preallocated slots and, with
//! `--reply`, sends each batch straight back to where it came from.

use std::{
    fs, io,
    mem::{size_of, MaybeUninit},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::{
    runtime::{self, Deadline, TICK},
    stats::{self, ErrorCounts},
    sys::{self, Epoll, EPOLLIN},
    Outcome,
};

/// Largest datagram the sink keeps whole; longer ones are counted with
/// their real length but truncated (MSG_TRUNC is not needed for counting).
const SLOT_LEN: usize = 9216;
/// recvmmsg batches per wakeup, so one busy socket returns to the loop
/// (deadline checks) at least every 64 × batch packets.
const BATCHES_PER_WAKEUP: usize = 64;

/// A fixed array of `mmsghdr`s with their iovecs, buffers and addresses,
/// wired together once. The Vecs are never resized after `new`, so the raw
/// pointers between them stay valid; the struct is not `Send` because of
/// them and lives on the thread that made it.
struct Batch {
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    /// Only for receive batches: the source of each datagram.
    _addrs: Vec<libc::sockaddr_storage>,
    /// Receive slots, or the one shared payload for sending.
    _bufs: Vec<u8>,
    slot_len: usize,
}

impl Batch {
    /// `n` receive slots of `slot_len` bytes, each with room for the sender's address.
    fn for_recv(n: usize, slot_len: usize) -> Self {
        let mut bufs = vec![0u8; n * slot_len];
        // SAFETY: sockaddr_storage is plain old data; zero is valid.
        let mut addrs: Vec<libc::sockaddr_storage> = (0..n)
            .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
            .collect();
        let mut iovs: Vec<libc::iovec> = (0..n)
            .map(|k| libc::iovec {
                // SAFETY: k * slot_len < bufs.len().
                iov_base: unsafe { bufs.as_mut_ptr().add(k * slot_len) } as *mut libc::c_void,
                iov_len: slot_len,
            })
            .collect();
        let msgs = (0..n)
            .map(|k| {
                // SAFETY: mmsghdr is plain old data; zero is valid.
                let mut m: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                // SAFETY: k < n for both arrays.
                m.msg_hdr.msg_iov = unsafe { iovs.as_mut_ptr().add(k) };
                m.msg_hdr.msg_iovlen = 1;
                // SAFETY: k < n, the length of addrs.
                m.msg_hdr.msg_name = unsafe { addrs.as_mut_ptr().add(k) } as *mut libc::c_void;
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m
            })
            .collect();
        Batch {
            msgs,
            iovs,
            _addrs: addrs,
            _bufs: bufs,
            slot_len,
        }
    }

    /// `n` messages that all send the same `size`-byte payload on a
    /// connected socket.
    fn for_send(n: usize, size: usize) -> Self {
        let mut bufs: Vec<u8> = (0..size.max(1)).map(|i| (i % 251) as u8).collect();
        let base = bufs.as_mut_ptr() as *mut libc::c_void;
        let mut iovs: Vec<libc::iovec> = (0..n)
            .map(|_| libc::iovec {
                iov_base: base,
                iov_len: size,
            })
            .collect();
        let msgs = (0..n)
            .map(|k| {
                // SAFETY: mmsghdr is plain old data; zero is valid.
                let mut m: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                // SAFETY: k < n.
                m.msg_hdr.msg_iov = unsafe { iovs.as_mut_ptr().add(k) };
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Batch {
            msgs,
            iovs,
            _addrs: Vec::new(),
            _bufs: bufs,
            slot_len: size,
        }
    }

    fn capacity(&self) -> usize {
        self.msgs.len()
    }

    /// Receives up to a batch without blocking; Ok(0) when nothing is queued.
    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for (m, iov) in self.msgs.iter_mut().zip(self.iovs.iter_mut()) {
            // Both are updated in place by the previous call.
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            iov.iov_len = self.slot_len;
        }
        // SAFETY: msgs and everything they point to are valid and sized as
        // declared (see `for_recv`).
        let ret = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        match sys::cvt(ret) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Length of received message `k` (its real length, even if truncated).
    fn len(&self, k: usize) -> usize {
        self.msgs[k].msg_len as usize
    }

    /// Sends back the first `n` received messages to their sources.
    fn reply(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
        for k in 0..n {
            let len = (self.msgs[k].msg_len as usize).min(self.slot_len);
            self.iovs[k].iov_len = len;
        }
        self.send(fd, n)
    }

    /// sendmmsg of the first `n` messages; Ok(0) when the socket is full.
    fn send(&mut self, fd: RawFd, n: usize) -> io::Result<usize> {
        let n = n.min(self.msgs.len());
        // SAFETY: as in `recv`; n is within the array.
        let ret = unsafe {
            libc::sendmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        match sys::cvt(ret) {
            Ok(sent) => Ok(sent as usize),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

#[derive(Args, Debug)]
pub struct SinkArgs {
    /// Address to receive on.
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// Echo every datagram back to its sender.
    #[arg(long)]
    reply: bool,
    /// Receiver threads (SO_REUSEPORT sockets, spread by 4-tuple); default 1.
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    /// Exit this many seconds after the last packet (once any arrived).
    #[arg(long, value_name = "SECS")]
    idle_exit: Option<f64>,
    /// Success needs at least this many packets.
    #[arg(long, value_name = "N", default_value_t = 1)]
    min_packets: u64,
    /// Socket receive buffer in bytes (SO_RCVBUFFORCE; default: the kernel's).
    #[arg(long, value_name = "BYTES")]
    rcvbuf: Option<i32>,
    /// Messages per recvmmsg.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch: u16,
    /// Created (containing "listening IP:PORT") once bound.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

#[derive(Serialize)]
struct SinkReport {
    listen: String,
    threads: usize,
    packets: u64,
    bytes: u64,
    /// From the first packet to the last.
    seconds: f64,
    pps: f64,
    gbit_per_sec: f64,
    replies: u64,
    /// Replies the socket would not take (full) or refused.
    reply_drops: u64,
    errors: ErrorCounts,
    /// Datagrams the kernel dropped for this namespace (receive buffer full,
    /// other input errors) during the run: the sink's blind spot otherwise.
    kernel_rcvbuf_errors: Option<u64>,
    kernel_in_errors: Option<u64>,
}

/// Activity shared by the sink threads, for `--idle-exit` and the window.
struct SinkShared {
    start: Instant,
    packets: AtomicU64,
    /// Nanoseconds since `start` of the first/last packet (+1, 0 = none).
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

#[derive(Default)]
struct SinkPart {
    packets: u64,
    bytes: u64,
    replies: u64,
    reply_drops: u64,
    errors: ErrorCounts,
}

pub fn run_sink(args: &SinkArgs, deadline: &Deadline) -> Result<Outcome> {
    let threads = args.threads.max(1);
    let first = udp_bind(&args.listen, threads > 1, args.rcvbuf)?;
    let bound = sys::local_addr(&first).context("getsockname")?;
    let mut sockets = vec![first];
    for _ in 1..threads {
        sockets.push(udp_bind(&bound, true, args.rcvbuf)?);
    }
    let before = udp_snmp();
    eprintln!("listening {bound}");
    if let Some(path) = &args.ready_file {
        runtime::write_signal_file(path, &format!("listening {bound}\n"))?;
    }
    let shared = SinkShared {
        start: Instant::now(),
        packets: AtomicU64::new(0),
        first_ns: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
    };
    let parts = runtime::run_workers(sockets, |_, socket| {
        sink_thread(args, deadline, &shared, socket)
    })?;
    let after = udp_snmp();

    let mut total = SinkPart::default();
    for p in parts {
        total.packets += p.packets;
        total.bytes += p.bytes;
        total.replies += p.replies;
        total.reply_drops += p.reply_drops;
        total.errors.merge(&p.errors);
    }
    let first = shared.first_ns.load(Ordering::Relaxed);
    let last = shared.last_ns.load(Ordering::Relaxed);
    let secs = if first > 0 && last >= first {
        (last - first) as f64 / 1e9
    } else {
        0.0
    };
    let delta = |f: fn(&Snmp) -> u64| match (&before, &after) {
        (Some(b), Some(a)) => Some(f(a).saturating_sub(f(b))),
        _ => None,
    };
    let report = SinkReport {
        listen: bound.to_string(),
        threads,
        packets: total.packets,
        bytes: total.bytes,
        seconds: stats::round3(secs),
        pps: stats::per_sec(total.packets, secs),
        gbit_per_sec: stats::gbit_per_sec(total.bytes, secs),
        replies: total.replies,
        reply_drops: total.reply_drops,
        errors: total.errors,
        kernel_rcvbuf_errors: delta(|s| s.rcvbuf_errors),
        kernel_in_errors: delta(|s| s.in_errors),
    };
    let failure = (total.packets < args.min_packets).then(|| {
        format!(
            "received {} packets, fewer than --min-packets {}",
            total.packets, args.min_packets
        )
    });
    Outcome::new(&report, failure)
}

fn udp_bind(addr: &SocketAddr, reuse_port: bool, rcvbuf: Option<i32>) -> Result<OwnedFd> {
    let fd = sys::socket(&addr.ip(), libc::SOCK_DGRAM).context("socket(UDP)")?;
    if reuse_port {
        sys::set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).context("SO_REUSEPORT")?;
    }
    if let Some(bytes) = rcvbuf {
        // FORCE (root) goes past net.core.rmem_max, which is small by default.
        sys::set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
            .context("SO_RCVBUFFORCE")?;
    }
    sys::bind(&fd, addr).with_context(|| format!("binding UDP {addr}"))?;
    Ok(fd)
}

fn sink_thread(
    args: &SinkArgs,
    deadline: &Deadline,
    shared: &SinkShared,
    socket: OwnedFd,
) -> Result<SinkPart> {
    let fd = socket.as_raw_fd();
    let epoll = Epoll::new().context("epoll_create")?;
    epoll.add(fd, EPOLLIN, 0).context("epoll add")?;
    let mut batch = Batch::for_recv(usize::from(args.batch), SLOT_LEN);
    let mut events = sys::event_buffer(4);
    let mut part = SinkPart::default();
    let idle = args.idle_exit.map(Duration::from_secs_f64);
    while !deadline.expired() {
        if let Some(idle) = idle {
            let last = shared.last_ns.load(Ordering::Relaxed);
            if last > 0 && shared.start.elapsed() > Duration::from_nanos(last) + idle {
                break;
            }
        }
        let n = epoll
            .wait(&mut events, deadline.wait_for(TICK))
            .context("epoll_wait")?;
        if n == 0 {
            continue;
        }
        for _ in 0..BATCHES_PER_WAKEUP {
            let got = match batch.recv(fd) {
                Ok(0) => break,
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // e.g. ECONNREFUSED queued by an ICMP error for one of
                    // our replies: count it and go on.
                    part.errors.add_io(&e);
                    continue;
                }
            };
            part.packets += got as u64;
            part.bytes += (0..got).map(|k| batch.len(k) as u64).sum::<u64>();
            // +1 keeps 0 meaning "no packet yet".
            let now_ns = shared.start.elapsed().as_nanos() as u64 + 1;
            if shared.packets.fetch_add(got as u64, Ordering::Relaxed) == 0 {
                let _ = shared.first_ns.compare_exchange(
                    0,
                    now_ns,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            shared.last_ns.fetch_max(now_ns, Ordering::Relaxed);
            if args.reply {
                match batch.reply(fd, got) {
                    Ok(sent) => {
                        part.replies += sent as u64;
                        part.reply_drops += (got - sent) as u64;
                    }
                    Err(e) => {
                        part.errors.add_io(&e);
                        part.reply_drops += got as u64;
                    }
                }
            }
        }
    }
    Ok(part)
}

/// The namespace's UDP counters, IPv4 (/proc/net/snmp) and IPv6 (/proc/net/snmp6) added up:
/// the sink takes the difference over its run, whichever family it listens on (read on the
/// main thread, which is in the namespace the sockets are).
struct Snmp {
    in_errors: u64,
    rcvbuf_errors: u64,
}

fn udp_snmp() -> Option<Snmp> {
    let v4 = fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = v4.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    // One "Name value" per line; absent when the kernel has no IPv6.
    let v6 = fs::read_to_string("/proc/net/snmp6").unwrap_or_default();
    let get6 = |name: &str| -> u64 {
        v6.lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Some(Snmp {
        in_errors: get("InErrors")? + get6("Udp6InErrors"),
        rcvbuf_errors: get("RcvbufErrors")? + get6("Udp6RcvbufErrors"),
    })
}

#[derive(Args, Debug)]
pub struct FloodArgs {
    /// Where to send (a udp-sink).
    #[arg(long, value_name = "IP:PORT")]
    connect: SocketAddr,
    /// UDP payload bytes per packet.
    #[arg(long, value_name = "BYTES", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(0..=65507))]
    size: u16,
    /// Seconds to send for (must end before --duration).
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub seconds: f64,
    /// Offered rate in packets per second over all flows (default: as fast as possible).
    #[arg(long, value_name = "PPS")]
    rate: Option<f64>,
    /// Sockets (source ports) to spread packets over.
    #[arg(long, value_name = "F", default_value_t = 1)]
    flows: usize,
    /// Sender threads; default: one per CPU, at most one per flow.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Stop after this many packets in total.
    #[arg(long, value_name = "N")]
    packets: Option<u64>,
    /// Source address.
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// Messages per sendmmsg.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch: u16,
    /// Count the sink's echoes (udp-sink --reply); success then needs some.
    #[arg(long)]
    replies: bool,
}

#[derive(Serialize)]
struct FloodReport {
    target: String,
    size: u16,
    flows: usize,
    threads: usize,
    packets: u64,
    bytes: u64,
    seconds: f64,
    pps: f64,
    /// UDP payload bits.
    gbit_per_sec: f64,
    offered_rate: Option<f64>,
    /// The achieved rate is within 10 % of --rate (the generator kept up).
    rate_achieved: Option<bool>,
    /// Times a socket's send buffer was full (we waited for room).
    socket_full: u64,
    send_errors: ErrorCounts,
    replies: Option<u64>,
}

#[derive(Default)]
struct FloodPart {
    packets: u64,
    socket_full: u64,
    replies: u64,
    errors: ErrorCounts,
    ended: Option<Instant>,
}

pub fn run_flood(args: &FloodArgs, deadline: &Deadline) -> Result<Outcome> {
    if args.flows == 0 || args.flows as u64 + 16 > sys::nofile_limit() {
        bail!("--flows must be between 1 and the open-file limit minus 16");
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number");
        }
    }
    let threads = args
        .threads
        .unwrap_or_else(|| runtime::default_threads(args.flows))
        .clamp(1, args.flows);
    // Open every socket up front: a refused bind shows before any traffic.
    let mut sockets = Vec::with_capacity(args.flows);
    for _ in 0..args.flows {
        let fd = sys::socket(&args.connect.ip(), libc::SOCK_DGRAM).context("socket(UDP)")?;
        if let Some(ip) = args.bind {
            sys::bind(&fd, &SocketAddr::new(ip, 0)).with_context(|| format!("binding {ip}"))?;
        }
        sys::connect(&fd, &args.connect).with_context(|| format!("connect {}", args.connect))?;
        sockets.push(fd);
    }
    let mut per_thread: Vec<Vec<OwnedFd>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, fd) in sockets.into_iter().enumerate() {
        per_thread[i % threads].push(fd);
    }
    let start = Instant::now();
    let end = deadline.window_end(start, args.seconds);
    let parts = runtime::run_workers(per_thread, |t, fds| {
        let rate = args.rate.map(|r| r / threads as f64);
        let cap = args
            .packets
            .map_or(u64::MAX, |p| runtime::share(p, threads, t));
        flood_thread(args, deadline, start, end, rate, cap, &fds)
    })?;

    let mut total = FloodPart::default();
    for p in parts {
        total.packets += p.packets;
        total.socket_full += p.socket_full;
        total.replies += p.replies;
        total.errors.merge(&p.errors);
        total.ended = total.ended.max(p.ended);
    }
    let secs = runtime::secs_between(start, total.ended.unwrap_or_else(Instant::now));
    let bytes = total.packets * u64::from(args.size);
    let pps = stats::per_sec(total.packets, secs);
    let rate_achieved = args.rate.map(|r| pps >= 0.9 * r);
    let report = FloodReport {
        target: args.connect.to_string(),
        size: args.size,
        flows: args.flows,
        threads,
        packets: total.packets,
        bytes,
        seconds: stats::round3(secs),
        pps,
        gbit_per_sec: stats::gbit_per_sec(bytes, secs),
        offered_rate: args.rate,
        rate_achieved,
        socket_full: total.socket_full,
        send_errors: total.errors,
        replies: args.replies.then_some(total.replies),
    };
    let failure = if total.packets == 0 {
        Some("no packet sent".to_string())
    } else if rate_achieved == Some(false) && args.packets.is_none() {
        Some(format!(
            "achieved {pps} pps, below 90 % of --rate {}",
            args.rate.unwrap_or_default()
        ))
    } else if args.replies && total.replies == 0 {
        Some("no replies received".to_string())
    } else {
        None
    };
    Outcome::new(&report, failure)
}

fn flood_thread(
    args: &FloodArgs,
    deadline: &Deadline,
    start: Instant,
    end: Instant,
    rate: Option<f64>,
    cap: u64,
    fds: &[OwnedFd],
) -> Result<FloodPart> {
    let batch_len = usize::from(args.batch);
    let mut out = Batch::for_send(batch_len, usize::from(args.size));
    let mut back = args
        .replies
        .then(|| Batch::for_recv(batch_len, usize::from(args.size).max(1)));
    // Paced: bursts of about 1 ms worth of packets (fewer syscalls than one
    // per packet, smooth enough for a fixed offered load).
    let burst = match rate {
        Some(r) => ((r / 1000.0) as usize).clamp(1, out.capacity()),
        None => out.capacity(),
    };
    let mut part = FloodPart::default();
    let mut sent = 0u64;
    let mut next_flow = 0usize;
    let mut checks = 0u32;
    loop {
        // Instant::now() is a vDSO call; the stop flag is an atomic load.
        let now = Instant::now();
        if now >= end || sent >= cap {
            break;
        }
        checks = checks.wrapping_add(1);
        if checks.is_multiple_of(64) && deadline.expired() {
            break;
        }
        let mut want = burst.min((cap - sent).min(usize::MAX as u64) as usize);
        if let Some(r) = rate {
            let due = (r * now.duration_since(start).as_secs_f64()) as u64;
            if due < sent + want as u64 {
                // Sleep until this burst is due (at most a tick, never past the end).
                let at = start + Duration::from_secs_f64((sent + want as u64) as f64 / r);
                let nap = at.saturating_duration_since(now).min(TICK);
                sys::sleep(nap.min(end.saturating_duration_since(now)));
                continue;
            }
            // Behind schedule (a late wakeup): catch up, a batch at a time.
            want = ((due - sent).min(cap - sent) as usize).min(out.capacity());
        }
        let fd = fds[next_flow].as_raw_fd();
        next_flow = (next_flow + 1) % fds.len();
        match out.send(fd, want) {
            Ok(0) => {
                part.socket_full += 1;
                sys::wait_writable(fd, Duration::from_millis(1));
            }
            Ok(n) => sent += n as u64,
            Err(e) => {
                // ECONNREFUSED: an ICMP port unreachable for an earlier
                // packet (nobody listening); ENOBUFS: a full device queue.
                part.errors.add_io(&e);
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    sys::sleep(Duration::from_micros(100));
                }
            }
        }
        if let Some(back) = back.as_mut() {
            part.replies += drain(back, fd, 4);
        }
    }
    part.ended = Some(Instant::now().min(end));
    part.packets = sent;
    // Replies still in flight: give them a moment (bounded by the deadline).
    if let Some(back) = back.as_mut() {
        let until = (Instant::now() + Duration::from_millis(200)).min(deadline.end);
        while Instant::now() < until && !runtime::stop_requested() {
            let got: u64 = fds.iter().map(|fd| drain(back, fd.as_raw_fd(), 64)).sum();
            part.replies += got;
            if got == 0 {
                sys::sleep(Duration::from_millis(5));
            }
        }
    }
    Ok(part)
}

/// Receives and counts whatever replies are queued, up to `batches` batches.
fn drain(batch: &mut Batch, fd: RawFd, batches: usize) -> u64 {
    let mut total = 0;
    for _ in 0..batches {
        match batch.recv(fd) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    total
}
