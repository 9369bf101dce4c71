//! The TCP server engine behind `tcp-hold-server`, `tcp-rr-server` and
//! `tcp-stream-server`: accept, then echo (raw or framed) or discard.
//!
//! One epoll loop per thread, level-triggered, every socket non-blocking.
//! Connections are kept in a table indexed by file descriptor (the fd limit
//! bounds it), so accepting and serving allocate nothing per connection
//! except, rarely, an overflow buffer for an echo the peer is slow to read.

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use anyhow::{Context, Result};

use crate::{
    proto::Framer,
    runtime::{self, Deadline, TICK},
    stats::ErrorCounts,
    sys::{self, Epoll, EPOLLIN, EPOLLOUT},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Echo bytes as they arrive (`tcp-hold-server`: any client works).
    EchoRaw,
    /// Echo, tracking `proto` message boundaries; close after a message
    /// flagged CLOSE (`tcp-rr-server`, which also serves `tcp-crr`).
    EchoFramed,
    /// Read and count (`tcp-stream-server`).
    Discard,
}

/// The options of every TCP server mode (flattened into each mode's arguments).
#[derive(clap::Args, Debug)]
pub struct ListenArgs {
    /// Address to listen on (port 0 picks one; see the "listening" line / ready file).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Exit once N connections have been accepted and all of them closed.
    #[arg(long, value_name = "N")]
    pub expect: Option<u64>,
    /// Created (containing "listening IP:PORT") once the socket listens.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// listen() backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 4096)]
    pub backlog: i32,
    /// Server threads (SO_REUSEPORT listeners) [default: the mode's: one per CPU, or one for
    /// tcp-hold-server, where holding connections is about counts, not throughput].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl ListenArgs {
    /// The server these options describe, doing `behavior`, with `--threads` listeners or
    /// else `default_threads`.
    pub fn config(&self, default_threads: usize, behavior: Behavior) -> Config {
        Config {
            listen: self.listen,
            threads: self.threads.unwrap_or(default_threads).max(1),
            behavior,
            expect: self.expect,
            ready_file: self.ready_file.clone(),
            backlog: self.backlog,
        }
    }
}

pub struct Config {
    pub listen: SocketAddr,
    pub threads: usize,
    pub behavior: Behavior,
    /// Exit once this many connections were accepted and all are closed.
    pub expect: Option<u64>,
    pub ready_file: Option<PathBuf>,
    pub backlog: i32,
}

/// What the servers report, summed over threads.
#[derive(Default)]
pub struct Totals {
    pub listen: Option<SocketAddr>,
    pub accepted: u64,
    pub closed: u64,
    pub peak_open: u64,
    pub bytes: u64,
    pub messages: u64,
    pub server_closes: u64,
    pub protocol_errors: u64,
    pub errors: ErrorCounts,
    pub peers: HashSet<IpAddr>,
    pub first_data: Option<Instant>,
    pub last_data: Option<Instant>,
    pub seconds: f64,
}

impl Totals {
    pub fn expect_met(&self, expect: Option<u64>) -> Result<(), String> {
        match expect {
            Some(n) if self.accepted < n => Err(format!(
                "accepted {} of the {n} expected connections",
                self.accepted
            )),
            Some(_) if self.closed < self.accepted => Err(format!(
                "{} of {} connections still open at the deadline",
                self.accepted - self.closed,
                self.accepted
            )),
            _ => Ok(()),
        }
    }

    /// Distinct peer addresses, sorted, at most `cap` of them.
    pub fn peer_list(&self, cap: usize) -> Vec<String> {
        let mut v: Vec<IpAddr> = self.peers.iter().copied().collect();
        v.sort();
        v.into_iter().take(cap).map(|ip| ip.to_string()).collect()
    }

    /// Seconds between the first and the last byte received.
    pub fn data_seconds(&self) -> f64 {
        match (self.first_data, self.last_data) {
            (Some(a), Some(b)) => runtime::secs_between(a, b),
            _ => 0.0,
        }
    }
}

/// Counters every thread updates, for `--expect` and `peak_open`
/// (touched once per connection, never per byte).
#[derive(Default)]
struct Shared {
    accepted: AtomicU64,
    closed: AtomicU64,
    open: AtomicU64,
    peak: AtomicU64,
}

impl Shared {
    fn done(&self, expect: Option<u64>) -> bool {
        expect.is_some_and(|n| {
            let accepted = self.accepted.load(Ordering::Relaxed);
            accepted >= n && self.closed.load(Ordering::Relaxed) >= accepted
        })
    }
}

const LISTENER: u64 = u64::MAX;
/// Accepts per wakeup, so one busy listener cannot starve open connections.
const ACCEPTS_PER_WAKEUP: usize = 256;
/// Reads per readable event before moving on (level-triggered: the rest is
/// reported again).
const READS_PER_EVENT: usize = 8;

pub fn run(cfg: &Config, deadline: &Deadline) -> Result<Totals> {
    let threads = cfg.threads.max(1);
    // Bind every listener before the ready file appears, so a client that
    // waits for it never meets a refused connection. With port 0 the others
    // reuse the port the first one got.
    let first = sys::tcp_listen(&cfg.listen, cfg.backlog, threads > 1)
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let bound = sys::local_addr(&first).context("getsockname")?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(
            sys::tcp_listen(&bound, cfg.backlog, true)
                .with_context(|| format!("listening on {bound} (SO_REUSEPORT)"))?,
        );
    }
    eprintln!("listening {bound}");
    if let Some(path) = &cfg.ready_file {
        runtime::write_signal_file(path, &format!("listening {bound}\n"))?;
    }

    let shared = Shared::default();
    let parts = runtime::run_workers(listeners, |_, listener| {
        Worker::new(cfg, &shared, listener)?.run(deadline)
    })?;

    let mut totals = Totals {
        listen: Some(bound),
        ..Totals::default()
    };
    for p in parts {
        totals.accepted += p.accepted;
        totals.closed += p.closed;
        totals.bytes += p.bytes;
        totals.messages += p.messages;
        totals.server_closes += p.server_closes;
        totals.protocol_errors += p.protocol_errors;
        totals.errors.merge(&p.errors);
        totals.peers.extend(p.peers);
        totals.first_data = min_opt(totals.first_data, p.first_data);
        totals.last_data = totals.last_data.max(p.last_data);
    }
    totals.peak_open = shared.peak.load(Ordering::Relaxed);
    totals.seconds = runtime::secs_between(deadline.start, Instant::now());
    Ok(totals)
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct Conn {
    fd: OwnedFd,
    framer: Framer,
    /// Echo bytes the socket would not take yet; while non-empty we stop
    /// reading from this peer (back-pressure) and wait for EPOLLOUT.
    pending: Vec<u8>,
    pending_off: usize,
    /// After `pending` drains: close (a CLOSE message was echoed).
    close_when_flushed: bool,
}

struct Worker<'a> {
    cfg: &'a Config,
    shared: &'a Shared,
    epoll: Epoll,
    listener: OwnedFd,
    conns: Vec<Option<Conn>>,
    buf: Vec<u8>,
    stats: Totals,
}

enum End {
    /// The peer closed (or reset): we close without a FIN of our own first.
    Peer,
    /// We close first after echoing a CLOSE message (tcp-crr).
    Server,
}

impl<'a> Worker<'a> {
    fn new(cfg: &'a Config, shared: &'a Shared, listener: OwnedFd) -> Result<Self> {
        let epoll = Epoll::new().context("epoll_create")?;
        epoll
            .add(listener.as_raw_fd(), EPOLLIN, LISTENER)
            .context("epoll add listener")?;
        let buf_len = if cfg.behavior == Behavior::Discard {
            128 << 10
        } else {
            64 << 10
        };
        Ok(Worker {
            cfg,
            shared,
            epoll,
            listener,
            conns: Vec::new(),
            buf: vec![0; buf_len],
            stats: Totals::default(),
        })
    }

    fn run(mut self, deadline: &Deadline) -> Result<Totals> {
        let mut events = sys::event_buffer(1024);
        while !deadline.expired() && !self.shared.done(self.cfg.expect) {
            let n = self
                .epoll
                .wait(&mut events, deadline.wait_for(TICK))
                .context("epoll_wait")?;
            for ev in &events[..n] {
                let (token, flags) = (ev.u64, ev.events);
                if token == LISTENER {
                    self.accept_some();
                } else {
                    self.on_event(token as RawFd, flags);
                }
            }
        }
        // Whatever is still open is closed by dropping the table.
        Ok(self.stats)
    }

    fn accept_some(&mut self) {
        for _ in 0..ACCEPTS_PER_WAKEUP {
            match sys::accept(&self.listener) {
                Ok(Some((fd, peer))) => self.adopt(fd, peer),
                Ok(None) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ECONNABORTED: the peer gave up while queued; EMFILE: out of
                // descriptors, which the next wakeup retries once some close.
                Err(e) => {
                    self.stats.errors.add_io(&e);
                    return;
                }
            }
        }
    }

    fn adopt(&mut self, fd: OwnedFd, peer: Option<SocketAddr>) {
        let raw = fd.as_raw_fd();
        if self.cfg.behavior != Behavior::Discard {
            // Best effort: a missing NODELAY only costs latency.
            let _ = sys::set_nodelay(&fd);
        }
        if let Err(e) = self.epoll.add(raw, EPOLLIN, raw as u64) {
            self.stats.errors.add_io(&e);
            return;
        }
        let slot = raw as usize;
        if self.conns.len() <= slot {
            // Grows to the highest descriptor once, bounded by RLIMIT_NOFILE.
            self.conns.resize_with(slot + 1, || None);
        }
        self.conns[slot] = Some(Conn {
            fd,
            framer: Framer::default(),
            pending: Vec::new(),
            pending_off: 0,
            close_when_flushed: false,
        });
        self.stats.accepted += 1;
        if let Some(p) = peer {
            self.stats.peers.insert(p.ip());
        }
        self.shared.accepted.fetch_add(1, Ordering::Relaxed);
        let open = self.shared.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.peak.fetch_max(open, Ordering::Relaxed);
    }

    fn close(&mut self, fd: RawFd, end: End) {
        let Some(conn) = self.conns.get_mut(fd as usize).and_then(Option::take) else {
            return;
        };
        if let End::Server = end {
            // Our FIN goes first; dropping the fd then closes it (and removes
            // it from epoll).
            let _ = sys::shutdown_write(conn.fd.as_raw_fd());
            self.stats.server_closes += 1;
        }
        drop(conn);
        self.stats.closed += 1;
        self.shared.closed.fetch_add(1, Ordering::Relaxed);
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn on_event(&mut self, fd: RawFd, flags: u32) {
        let Some(conn) = self.conns.get(fd as usize).and_then(Option::as_ref) else {
            return;
        };
        if !conn.pending.is_empty() {
            // Only EPOLLOUT (or ERR/HUP) is armed while output is pending.
            self.flush(fd);
        } else if flags & (EPOLLIN | sys::EPOLLERR | sys::EPOLLHUP) != 0 {
            self.read_some(fd);
        }
    }

    fn read_some(&mut self, fd: RawFd) {
        for _ in 0..READS_PER_EVENT {
            let n = match sys::recv(fd, &mut self.buf) {
                Ok(0) => return self.close(fd, End::Peer),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stats.errors.add_io(&e);
                    return self.close(fd, End::Peer);
                }
            };
            self.stats.bytes += n as u64;
            let now = Instant::now();
            self.stats.first_data.get_or_insert(now);
            self.stats.last_data = Some(now);
            if self.cfg.behavior == Behavior::Discard {
                continue;
            }
            let Some(conn) = self.conns.get_mut(fd as usize).and_then(Option::as_mut) else {
                return;
            };
            let mut close_after = false;
            if self.cfg.behavior == Behavior::EchoFramed {
                match conn.framer.feed(&self.buf[..n]) {
                    Ok(fed) => {
                        self.stats.messages += fed.messages;
                        close_after = fed.close;
                    }
                    Err(_) => {
                        self.stats.protocol_errors += 1;
                        return self.close(fd, End::Peer);
                    }
                }
            }
            let sent = match send_some(fd, &self.buf[..n]) {
                Ok(sent) => sent,
                Err(e) => {
                    self.stats.errors.add_io(&e);
                    return self.close(fd, End::Peer);
                }
            };
            if sent < n {
                // The peer is not reading fast enough: park the rest and stop
                // reading until it drains.
                conn.pending.extend_from_slice(&self.buf[sent..n]);
                conn.pending_off = 0;
                conn.close_when_flushed = close_after;
                if let Err(e) = self.epoll.modify(fd, EPOLLOUT, fd as u64) {
                    self.stats.errors.add_io(&e);
                    return self.close(fd, End::Peer);
                }
                return;
            }
            if close_after {
                return self.close(fd, End::Server);
            }
        }
    }

    fn flush(&mut self, fd: RawFd) {
        let Some(conn) = self.conns.get_mut(fd as usize).and_then(Option::as_mut) else {
            return;
        };
        match send_some(fd, &conn.pending[conn.pending_off..]) {
            Ok(sent) => conn.pending_off += sent,
            Err(e) => {
                self.stats.errors.add_io(&e);
                return self.close(fd, End::Peer);
            }
        }
        if conn.pending_off < conn.pending.len() {
            return;
        }
        // Keep the capacity: a peer that stalled once likely will again.
        conn.pending.clear();
        conn.pending_off = 0;
        if conn.close_when_flushed {
            return self.close(fd, End::Server);
        }
        if let Err(e) = self.epoll.modify(fd, EPOLLIN, fd as u64) {
            self.stats.errors.add_io(&e);
            self.close(fd, End::Peer);
        }
    }
}

/// Sends as much of `data` as the socket takes now (at most 64 calls);
/// WouldBlock is not an error, it just ends the loop.
pub fn send_some(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let mut off = 0;
    for _ in 0..64 {
        if off == data.len() {
            break;
        }
        match sys::send(fd, &data[off..]) {
            Ok(0) => break,
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}
