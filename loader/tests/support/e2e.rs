//! End-to-end helpers: a lab that removes itself, the `bpfnat up` daemon, and traffic
//! generators that run inside namespaces (sockets are opened on threads that entered the
//! namespace, so no external tool is needed to move or check data).
#![allow(
    dead_code,
    reason = "each test binary includes the shared support and uses a part of it"
)]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use bpfnat::{host::lab, host::netns};

/// A lab that is built on creation and removed on drop, even when the test panics.
pub struct Lab {
    pub spec: lab::LabSpec,
}

impl Lab {
    pub fn up(spec: lab::LabSpec) -> Self {
        for ns in spec.namespaces() {
            assert!(
                !netns::exists(ns),
                "namespace {ns} already exists: is a lab up? (`bpfnat lab down`)"
            );
        }
        let lab = Self { spec };
        lab::up(&lab.spec).expect("lab up");
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.spec) {
            eprintln!("lab down failed: {e:#}");
        }
    }
}

/// `bpfnat --netns NS up ...` (or the same under `ip netns exec`), stopped with SIGINT on
/// drop.
pub struct Daemon {
    child: Option<Child>,
    pub ready_line: String,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn start(netns: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bpfnat"));
        cmd.args(["--netns", netns, "up"]).args(args);
        Self::spawn(cmd)
    }

    /// `ip netns exec NS bpfnat up ...`: the way people who work with namespaces run
    /// everything (a mount namespace of its own, a fresh /sys).
    pub fn start_under_ip_netns_exec(netns: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_bpfnat"), "up"])
            .args(args);
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn bpfnat");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut daemon = Self {
            child: Some(child),
            ready_line: String::new(),
            lines: rx,
        };
        let ready = daemon
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("bpfnat did not print its ready line");
        assert!(
            ready.starts_with("ready:"),
            "unexpected first line: {ready}"
        );
        daemon.ready_line = ready;
        daemon
    }

    /// Stop with SIGINT and return the exit status and the remaining stdout lines.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        let status = interrupt_and_wait(&mut child);
        let rest = self.lines.try_iter().collect();
        (status, rest)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            interrupt_and_wait(&mut child);
        }
    }
}

fn interrupt_and_wait(child: &mut Child) -> std::process::ExitStatus {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().expect("wait")
}

/// `ip netns exec NS ARGS...`, returning (success, stdout).
pub fn ns_exec(ns: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub fn ping(ns: &str, dst: Ipv4Addr) -> bool {
    ns_exec(
        ns,
        &[
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            "-i",
            "0.2",
            "-q",
            &dst.to_string(),
        ],
    )
    .0
}

/// Assert that neither iptables nor nftables has any NAT (or other) rule in `ns`.
pub fn assert_no_netfilter_nat(ns: &str) {
    let (_, ipt) = ns_exec(ns, &["iptables-save", "-t", "nat"]);
    assert!(
        !ipt.lines().any(|l| l.starts_with("-A")),
        "iptables nat rules in {ns}:\n{ipt}"
    );
    let (_, nft) = ns_exec(ns, &["nft", "list", "ruleset"]);
    assert!(!nft.contains("nat"), "nftables nat in {ns}:\n{nft}");
}

/// Run `f` on a new thread inside network namespace `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        netns::enter(&ns).expect("enter netns");
        f()
    })
}

/// Deterministic byte stream (xorshift64), so the receiver can check every byte.
pub struct Stream(u64);

impl Stream {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// What a TCP server saw of one connection.
#[derive(Debug)]
pub struct TcpSeen {
    pub peer: SocketAddr,
    pub bytes: u64,
    pub intact: bool,
}

/// A TCP server in `ns` on `addr` that accepts `conns` connections, checks each stream
/// against `Stream::new(seed)` and reports the peer address, byte count and integrity. The
/// server answers each client with "OK <peer>" once the stream ends.
pub fn tcp_sink(
    ns: &str,
    addr: impl Into<SocketAddr>,
    conns: usize,
    seed: u64,
) -> thread::JoinHandle<Vec<TcpSeen>> {
    let addr = addr.into();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = spawn_in(ns, move || {
        let listener = TcpListener::bind(addr).expect("bind sink");
        ready_tx.send(()).ok();
        let mut workers = Vec::new();
        for _ in 0..conns {
            let (mut sock, peer) = listener.accept().expect("accept");
            workers.push(thread::spawn(move || {
                sock.set_read_timeout(Some(Duration::from_secs(60))).ok();
                let mut checker = Checker::new(seed);
                let mut buf = vec![0u8; 1 << 16];
                let (mut bytes, mut intact) = (0u64, true);
                loop {
                    let n = match sock.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    intact &= checker.check(&buf[..n]);
                    bytes += n as u64;
                }
                let _ = sock.write_all(format!("OK {peer}\n").as_bytes());
                TcpSeen {
                    peer,
                    bytes,
                    intact,
                }
            }));
        }
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("sink listening");
    handle
}

/// Block size of the stream: sender and receiver generate the same 64 KiB blocks.
const BLOCK: usize = 1 << 16;

/// Compares received bytes with the stream the sender generated.
struct Checker {
    gen: Stream,
    block: Vec<u8>,
    pos: usize,
}

impl Checker {
    fn new(seed: u64) -> Self {
        Self {
            gen: Stream::new(seed),
            block: vec![0; BLOCK],
            pos: BLOCK,
        }
    }

    fn check(&mut self, mut data: &[u8]) -> bool {
        let mut ok = true;
        while !data.is_empty() {
            if self.pos == BLOCK {
                self.gen.fill(&mut self.block);
                self.pos = 0;
            }
            let n = data.len().min(BLOCK - self.pos);
            ok &= data[..n] == self.block[self.pos..self.pos + n];
            self.pos += n;
            data = &data[n..];
        }
        ok
    }
}

/// Send `len` bytes of `Stream::new(seed)` from `ns` (optionally from a fixed local IPv4
/// address) to `dst` (either family), then wait for the server's "OK" line. Returns that line.
pub fn tcp_send(
    ns: &str,
    local: Option<SocketAddrV4>,
    dst: impl Into<SocketAddr>,
    len: u64,
    seed: u64,
) -> thread::JoinHandle<Result<String, String>> {
    let dst = dst.into();
    spawn_in(ns, move || {
        let sock = match (local, dst) {
            (Some(local), SocketAddr::V4(dst)) => {
                let s = socket2_bind(local).map_err(|e| format!("bind {local}: {e}"))?;
                s.connect_timeout(dst, Duration::from_secs(3))
                    .map_err(|e| format!("connect {dst}: {e}"))?
            }
            (Some(local), SocketAddr::V6(_)) => {
                return Err(format!("{local} is IPv4, {dst} is not"));
            }
            (None, dst) => TcpStream::connect_timeout(&dst, Duration::from_secs(3))
                .map_err(|e| format!("connect {dst}: {e}"))?,
        };
        let mut sock = sock;
        sock.set_write_timeout(Some(Duration::from_secs(30))).ok();
        sock.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let mut gen = Stream::new(seed);
        let mut buf = vec![0u8; BLOCK];
        let mut sent = 0u64;
        while sent < len {
            gen.fill(&mut buf);
            let n = ((len - sent) as usize).min(BLOCK);
            sock.write_all(&buf[..n])
                .map_err(|e| format!("send: {e}"))?;
            sent += n as u64;
        }
        sock.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut answer = String::new();
        sock.read_to_string(&mut answer)
            .map_err(|e| format!("read answer: {e}"))?;
        Ok(answer.trim().to_owned())
    })
}

/// A TCP socket bound to `local` before connecting (so tests can pick the source port).
struct BoundSocket(std::os::fd::OwnedFd);

fn socket2_bind(local: SocketAddrV4) -> std::io::Result<BoundSocket> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(local),
    )?;
    Ok(BoundSocket(fd))
}

impl BoundSocket {
    fn connect_timeout(self, dst: SocketAddrV4, _timeout: Duration) -> std::io::Result<TcpStream> {
        use nix::sys::socket::{connect, SockaddrIn};
        let stream = TcpStream::from(self.0);
        // Blocking connect: the kernel's SYN retries bound it; callers only use it where the
        // path is expected to work.
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            &SockaddrIn::from(dst),
        )?;
        Ok(stream)
    }
}

/// A UDP echo server in `ns` on `addr` (either family): answers each datagram with "<peer>
/// <payload>", for `duration`.
pub fn udp_echo(
    ns: &str,
    addr: impl Into<SocketAddr>,
    duration: Duration,
) -> thread::JoinHandle<Vec<SocketAddr>> {
    let addr = addr.into();
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = spawn_in(ns, move || {
        let sock = UdpSocket::bind(addr).expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_millis(100))).ok();
        ready_tx.send(()).ok();
        let end = Instant::now() + duration;
        let mut peers = Vec::new();
        let mut buf = [0u8; 65535];
        while Instant::now() < end {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let mut reply = format!("{peer} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, peer);
                peers.push(peer);
            }
        }
        peers
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("udp echo ready");
    h
}

/// Send one UDP request from `ns` to `dst` (either family) and return the answer (None after
/// 3 tries of 1 s).
pub fn udp_request(ns: &str, dst: impl Into<SocketAddr>, payload: Vec<u8>) -> Option<Vec<u8>> {
    let dst = dst.into();
    spawn_in(ns, move || {
        let any = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let sock = UdpSocket::bind(any).ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(1))).ok();
        let mut buf = vec![0u8; 65535];
        for _ in 0..3 {
            sock.send_to(&payload, dst).ok()?;
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return Some(buf[..n].to_vec());
            }
        }
        None
    })
    .join()
    .ok()
    .flatten()
}

/// The NAT programs attached to `iface` in `ns` (TCX links and cls_bpf filters), one
/// "hook name" per line; empty when nothing of ours is attached.
pub fn tc_programs(ns: &str, iface: &str) -> String {
    let iface_owned = iface.to_owned();
    let mut lines: Vec<String> = spawn_in(ns, move || {
        bpfnat::bpf::datapath::tcx_programs(&iface_owned)
    })
    .join()
    .expect("query thread")
    .expect("query TCX")
    .into_iter()
    .map(|p| format!("tcx/{} {}", p.hook, p.name))
    .collect();
    for hook in ["egress", "ingress"] {
        let (_, out) = ns_exec(ns, &["tc", "filter", "show", "dev", iface, hook]);
        lines.extend(
            out.lines()
                // A cls_bpf filter in direct-action mode, as ours are, names its program.
                .filter(|l| l.contains("direct-action"))
                .map(|l| format!("cls_bpf/{hook} {}", l.trim())),
        );
    }
    lines.join("\n")
}

impl Daemon {
    /// The daemon's process id (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The stdout lines printed since the ready line (or the last call), waiting up to `wait`
    /// for the first one.
    pub fn lines_within(&self, wait: Duration) -> Vec<String> {
        let mut out: Vec<String> = self.lines.recv_timeout(wait).into_iter().collect();
        out.extend(self.lines.try_iter());
        out
    }
}

/// Send one UDP request from `ns`, from the fixed local address `local`, and return the
/// answer (None after 3 tries of 1 s).
pub fn udp_request_from(
    ns: &str,
    local: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Vec<u8>,
) -> Option<Vec<u8>> {
    spawn_in(ns, move || {
        let sock = UdpSocket::bind(local).ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(1))).ok();
        let mut buf = vec![0u8; 65535];
        for _ in 0..3 {
            sock.send_to(&payload, dst).ok()?;
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return Some(buf[..n].to_vec());
            }
        }
        None
    })
    .join()
    .ok()
    .flatten()
}

/// The peer address a `udp_echo` server reported in its answer ("<peer> <payload>").
pub fn echo_peer(answer: &[u8]) -> Option<SocketAddrV4> {
    match echo_peer_addr(answer)? {
        SocketAddr::V4(peer) => Some(peer),
        SocketAddr::V6(_) => None,
    }
}

/// [`echo_peer`] for either family.
pub fn echo_peer_addr(answer: &[u8]) -> Option<SocketAddr> {
    let end = answer.iter().position(|&b| b == b' ')?;
    std::str::from_utf8(&answer[..end]).ok()?.parse().ok()
}

/// The peer address's IP a `udp_echo` server reported in its answer.
pub fn echo_peer_ip(answer: &[u8]) -> Option<IpAddr> {
    echo_peer_addr(answer).map(|p| p.ip())
}

/// One TCP connection from `client_ns` to a server in `server_ns`, held open until
/// [`HeldTcp::close`] (or drop). Both ends give up after 60 s on their own.
pub struct HeldTcp {
    release: Option<mpsc::Sender<()>>,
    client: Option<thread::JoinHandle<()>>,
    server: Option<thread::JoinHandle<Option<SocketAddr>>>,
    /// The client's own address (inside the container).
    pub local: SocketAddr,
}

impl HeldTcp {
    pub fn open(server_ns: &str, client_ns: &str, addr: impl Into<SocketAddr>) -> Self {
        let addr = addr.into();
        let (ready_tx, ready_rx) = mpsc::channel();
        let server = spawn_in(server_ns, move || {
            let listener = TcpListener::bind(addr).expect("bind held-tcp server");
            listener.set_nonblocking(true).ok();
            ready_tx.send(()).ok();
            let deadline = Instant::now() + Duration::from_secs(10);
            let (mut sock, peer) = loop {
                match listener.accept() {
                    Ok(conn) => break conn,
                    Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                    Err(_) => return None,
                }
            };
            sock.set_nonblocking(false).ok();
            sock.set_read_timeout(Some(Duration::from_secs(60))).ok();
            let mut buf = [0u8; 1024];
            // Answer the greeting, then wait for the client to close.
            if matches!(sock.read(&mut buf), Ok(n) if n > 0) {
                let _ = sock.write_all(b"ok\n");
            }
            while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
            Some(peer)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("held-tcp server listening");
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (local_tx, local_rx) = mpsc::channel();
        let client = spawn_in(client_ns, move || {
            let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .expect("held-tcp connect");
            sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
            sock.write_all(b"hello\n").expect("held-tcp send");
            let mut buf = [0u8; 16];
            let _ = sock.read(&mut buf);
            local_tx.send(sock.local_addr().expect("local addr")).ok();
            let _ = release_rx.recv_timeout(Duration::from_secs(60));
            let _ = sock.shutdown(std::net::Shutdown::Both);
        });
        let local = local_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("held-tcp connected");
        Self {
            release: Some(release_tx),
            client: Some(client),
            server: Some(server),
            local,
        }
    }

    /// Close the connection; returns the peer address the server saw.
    pub fn close(mut self) -> Option<SocketAddr> {
        self.release.take();
        if let Some(c) = self.client.take() {
            let _ = c.join();
        }
        self.server.take().and_then(|s| s.join().ok().flatten())
    }
}

impl Drop for HeldTcp {
    fn drop(&mut self) {
        // Dropping the sender wakes the client, which closes; the server then sees EOF.
        self.release.take();
    }
}

/// A TCP echo server on `addr` in `ns`, until `stop`.
pub fn echo_server(ns: &str, addr: SocketAddrV4, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = spawn_in(ns, move || {
        let listener = TcpListener::bind(addr).expect("bind echo server");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).ok();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut sock, _)) => {
                    thread::spawn(move || {
                        sock.set_nonblocking(false).ok();
                        sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
                        let mut buf = [0u8; 256];
                        while let Ok(n) = sock.read(&mut buf) {
                            if n == 0 || sock.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("echo server ready");
    h
}
