//! `tcp-rr-server`, `tcp-rr` and `tcp-crr`: request/response latency and
//! rate over persistent connections (RR) and with a new connection per
//! transaction (CRR), in the framing of `proto.rs`.
//!
//! ## Who closes first in CRR, and TIME_WAIT
//!
//! The side that sends the first FIN ends in TIME_WAIT for 60 s, holding
//! its 4-tuple. If the client closed first, every transaction would pin one
//! client ephemeral port (32768-60999 by default: 28,232 ports) for a
//! minute, so CRR would collapse to ~470 connections/s after half a minute
//! with EADDRNOTAVAIL (`tcp_tw_reuse` only helps on loopback by default),
//! and a SO_LINGER 0 close would replace the FIN with an RST, which is not
//! what a NAT should be measured on.
//!
//! So the client sets the CLOSE flag on its request and the *server* closes
//! first, right after echoing it: the client reads the response, then the
//! server's FIN, and only then closes (LAST_ACK, no TIME_WAIT). Its port is
//! free again as soon as the server ACKs that FIN. The TIME_WAIT entries
//! pile up on the server instead (bounded by `tcp_max_tw_buckets`, past which
//! the kernel just skips TIME_WAIT with a log line), and a client that
//! reuses a port whose old 4-tuple the server still has in TIME_WAIT is
//! fine: the server accepts a new SYN on a TIME_WAIT socket when its TCP
//! timestamp is newer (timestamps are on by default). Through a NAT, the
//! NAT's table sees the same 4-tuples come back and must cope with a new
//! SYN on a tuple whose previous connection it saw closing.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::{
    proto::{self, FLAG_CLOSE, HEADER_LEN},
    runtime::{self, Deadline, TICK},
    server::{self, send_some, Behavior},
    stats::{self, ErrorCounts, Histogram, LatencySummary},
    sys::{self, Epoll, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT},
    Outcome,
};

/// The options of the echo server of tcp-rr and tcp-crr.
pub type ServerArgs = server::ListenArgs;

#[derive(Serialize)]
struct ServerReport {
    listen: String,
    threads: usize,
    accepted: u64,
    closed: u64,
    peak_open: u64,
    peers_distinct: usize,
    /// Complete messages echoed (= client transactions).
    messages: u64,
    /// Connections the server closed first (CRR requests).
    server_closes: u64,
    bytes_echoed: u64,
    protocol_errors: u64,
    errors: ErrorCounts,
    expect: Option<u64>,
    seconds: f64,
}

pub fn run_server(args: &ServerArgs, deadline: &Deadline) -> Result<Outcome> {
    let cfg = args.config(runtime::default_threads(usize::MAX), Behavior::EchoFramed);
    let threads = cfg.threads;
    let totals = server::run(&cfg, deadline)?;
    let report = ServerReport {
        listen: totals.listen.map(|a| a.to_string()).unwrap_or_default(),
        threads,
        accepted: totals.accepted,
        closed: totals.closed,
        peak_open: totals.peak_open,
        peers_distinct: totals.peers.len(),
        messages: totals.messages,
        server_closes: totals.server_closes,
        bytes_echoed: totals.bytes,
        protocol_errors: totals.protocol_errors,
        errors: totals.errors.clone(),
        expect: args.expect,
        seconds: stats::round3(totals.seconds),
    };
    let failure = match totals.expect_met(args.expect) {
        Err(e) => Some(e),
        Ok(()) if totals.protocol_errors > 0 => Some(format!(
            "{} connections sent bytes that are not loadgen rr messages",
            totals.protocol_errors
        )),
        Ok(()) => None,
    };
    Outcome::new(&report, failure)
}

/// Options shared by `tcp-rr` and `tcp-crr`.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// The tcp-rr-server.
    #[arg(long, value_name = "IP:PORT")]
    connect: SocketAddr,
    /// Request (= response) size in bytes, 4-byte header included.
    #[arg(long, value_name = "BYTES", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(proto::MIN_SIZE as i64..))]
    size: u16,
    /// Seconds to run for (must end before --duration).
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub seconds: f64,
    /// Client threads; default: one per CPU, at most one per connection.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Source address.
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
}

#[derive(Args, Debug)]
pub struct RrArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Persistent connections, each with one transaction in flight.
    #[arg(long, value_name = "C", default_value_t = 1)]
    conns: usize,
}

#[derive(Args, Debug)]
pub struct CrrArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Transactions (connections) in flight at once.
    #[arg(long, value_name = "P", default_value_t = 1)]
    parallel: usize,
    /// Seconds one transaction may take before it counts as failed.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
}

#[derive(Serialize)]
struct RrReport {
    target: String,
    size: u16,
    conns: usize,
    threads: usize,
    transactions: u64,
    seconds: f64,
    per_sec: f64,
    failed: u64,
    errors: ErrorCounts,
    /// Transactions still in flight a second after the window ended.
    abandoned: u64,
    /// Request sent to response fully received, per transaction.
    #[serde(flatten)]
    latency: LatencySummary,
}

#[derive(Serialize)]
struct CrrReport {
    target: String,
    size: u16,
    parallel: usize,
    threads: usize,
    /// Completed transactions: connect, request, response, server FIN, close.
    connections: u64,
    seconds: f64,
    per_sec: f64,
    failed: u64,
    errors: ErrorCounts,
    /// Still in flight when the run ended (not counted as failed).
    abandoned: u64,
    /// connect() to the server's FIN, per transaction.
    #[serde(flatten)]
    latency: LatencySummary,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Idle,
    Connecting,
    Sending {
        off: usize,
    },
    Receiving {
        got: usize,
    },
    /// CRR: response complete, waiting for the server's FIN.
    AwaitFin,
}

struct Conn {
    fd: Option<OwnedFd>,
    state: State,
    /// The epoll interest currently registered, to skip redundant epoll_ctl.
    interest: u32,
    t0: Instant,
    /// CRR: earliest time to reopen after an immediate failure.
    retry_at: Instant,
}

impl Conn {
    fn idle(now: Instant) -> Self {
        Conn {
            fd: None,
            state: State::Idle,
            interest: 0,
            t0: now,
            retry_at: now,
        }
    }

    fn raw(&self) -> Option<RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }
}

/// One thread's results.
#[derive(Default)]
struct Part {
    done: u64,
    failed: u64,
    abandoned: u64,
    errors: ErrorCounts,
    latency: Histogram,
    /// When the last transaction completed.
    ended: Option<Instant>,
}

/// RR or CRR, one thread's worth of connections.
struct Driver<'a> {
    common: &'a CommonArgs,
    crr: bool,
    epoll: Epoll,
    conns: Vec<Conn>,
    request: Vec<u8>,
    part: Part,
}

pub fn run_rr(args: &RrArgs, deadline: &Deadline) -> Result<Outcome> {
    let c = &args.common;
    if args.conns == 0 || args.conns as u64 + 16 > sys::nofile_limit() {
        bail!("--conns must be between 1 and the open-file limit minus 16");
    }
    let threads = c
        .threads
        .unwrap_or_else(|| runtime::default_threads(args.conns))
        .clamp(1, args.conns);
    let start = Instant::now();
    let end = deadline.window_end(start, c.seconds);
    let inputs: Vec<u64> = (0..threads)
        .map(|t| runtime::share(args.conns as u64, threads, t))
        .collect();
    let parts = runtime::run_workers(inputs, |_, n| {
        Driver::new(c, false, n as usize)?.run(deadline, end)
    })?;
    let total = merge(parts);
    let secs = runtime::secs_between(start, total.ended.unwrap_or_else(Instant::now));
    let report = RrReport {
        target: c.connect.to_string(),
        size: c.size,
        conns: args.conns,
        threads,
        transactions: total.done,
        seconds: stats::round3(secs),
        per_sec: stats::per_sec(total.done, secs),
        failed: total.failed,
        errors: total.errors.clone(),
        abandoned: total.abandoned,
        latency: total.latency.summary(),
    };
    let failure = if total.failed > 0 {
        Some(format!(
            "{} of {} connections failed",
            total.failed, args.conns
        ))
    } else if total.done == 0 {
        Some("no transaction completed".to_string())
    } else {
        None
    };
    Outcome::new(&report, failure)
}

pub fn run_crr(args: &CrrArgs, deadline: &Deadline) -> Result<Outcome> {
    let c = &args.common;
    if args.parallel == 0 || args.parallel as u64 + 16 > sys::nofile_limit() {
        bail!("--parallel must be between 1 and the open-file limit minus 16");
    }
    let threads = c
        .threads
        .unwrap_or_else(|| runtime::default_threads(args.parallel))
        .clamp(1, args.parallel);
    let start = Instant::now();
    let end = deadline.window_end(start, c.seconds);
    let timeout = Duration::from_secs_f64(args.timeout.max(0.001));
    let inputs: Vec<u64> = (0..threads)
        .map(|t| runtime::share(args.parallel as u64, threads, t))
        .collect();
    let parts = runtime::run_workers(inputs, |_, n| {
        Driver::new(c, true, n as usize)?.run_crr(deadline, end, timeout)
    })?;
    let total = merge(parts);
    // Up to the last completed transaction (those in flight at the end of
    // the window may complete a little later and are counted).
    let secs = runtime::secs_between(start, total.ended.unwrap_or_else(Instant::now));
    let report = CrrReport {
        target: c.connect.to_string(),
        size: c.size,
        parallel: args.parallel,
        threads,
        connections: total.done,
        seconds: stats::round3(secs),
        per_sec: stats::per_sec(total.done, secs),
        failed: total.failed,
        errors: total.errors.clone(),
        abandoned: total.abandoned,
        latency: total.latency.summary(),
    };
    let failure = if total.failed > 0 {
        Some(format!("{} connections failed", total.failed))
    } else if total.done == 0 {
        Some("no connection completed".to_string())
    } else {
        None
    };
    Outcome::new(&report, failure)
}

fn merge(parts: Vec<Part>) -> Part {
    let mut total = Part::default();
    for p in parts {
        total.done += p.done;
        total.failed += p.failed;
        total.abandoned += p.abandoned;
        total.errors.merge(&p.errors);
        total.latency.merge(&p.latency);
        total.ended = total.ended.max(p.ended);
    }
    total
}

/// Reads per readable event.
const READS_PER_EVENT: usize = 4;

impl<'a> Driver<'a> {
    fn new(common: &'a CommonArgs, crr: bool, n: usize) -> Result<Self> {
        let now = Instant::now();
        Ok(Driver {
            common,
            crr,
            epoll: Epoll::new().context("epoll_create")?,
            conns: (0..n).map(|_| Conn::idle(now)).collect(),
            request: proto::request(usize::from(common.size), if crr { FLAG_CLOSE } else { 0 }),
            part: Part::default(),
        })
    }

    /// RR: connect everything once, then keep one transaction in flight on
    /// each connection until `end`. A connection that fails stays failed
    /// (RR measures a steady path; CRR is the one that reconnects). After
    /// `end` no new request starts; the ones in flight get up to a second to
    /// finish, so no connection is closed with a response still arriving
    /// (which would turn our FIN into an RST).
    fn run(mut self, deadline: &Deadline, end: Instant) -> Result<Part> {
        for i in 0..self.conns.len() {
            self.open(i);
        }
        let mut events = sys::event_buffer(256);
        let drain_end = (end + Duration::from_secs(1)).min(deadline.end);
        loop {
            let now = Instant::now();
            if deadline.expired() || now >= drain_end {
                break;
            }
            if now >= end {
                for c in self.conns.iter_mut() {
                    if c.state == State::Connecting {
                        c.fd = None;
                        c.state = State::Idle;
                    }
                }
            }
            if self.conns.iter().all(|c| c.state == State::Idle) {
                break;
            }
            let until = if now < end { end } else { drain_end };
            let wait = until.saturating_duration_since(now).min(TICK);
            let n = self.epoll.wait(&mut events, wait).context("epoll_wait")?;
            for ev in &events[..n] {
                let (i, flags) = (ev.u64 as usize, ev.events);
                self.on_event(i, flags, end);
            }
        }
        self.part.abandoned = self.conns.iter().filter(|c| c.state != State::Idle).count() as u64;
        // RR connections close here, client first: a handful of TIME_WAIT
        // entries, one per connection, is harmless.
        self.conns.clear();
        Ok(self.part)
    }

    /// CRR: every idle slot opens a new connection, until `end`; then in
    /// flight transactions get up to one more second to finish.
    fn run_crr(mut self, deadline: &Deadline, end: Instant, timeout: Duration) -> Result<Part> {
        let mut events = sys::event_buffer(256);
        let drain_end = (end + Duration::from_secs(1)).min(deadline.end);
        let mut last_scan = Instant::now();
        loop {
            let now = Instant::now();
            let launching = now < end && !deadline.expired();
            if launching {
                for i in 0..self.conns.len() {
                    if self.conns[i].state == State::Idle && now >= self.conns[i].retry_at {
                        self.open(i);
                    }
                }
            } else if now >= drain_end
                || runtime::stop_requested()
                || self.conns.iter().all(|c| c.state == State::Idle)
            {
                break;
            }
            let wait = if launching {
                end.saturating_duration_since(now).min(TICK)
            } else {
                drain_end.saturating_duration_since(now).min(TICK)
            };
            // A slot backing off after an immediate failure wakes us in 1 ms.
            let wait = if launching && self.conns.iter().any(|c| c.state == State::Idle) {
                wait.min(Duration::from_millis(1))
            } else {
                wait
            };
            let n = self.epoll.wait(&mut events, wait).context("epoll_wait")?;
            for ev in &events[..n] {
                let (i, flags) = (ev.u64 as usize, ev.events);
                self.on_event(i, flags, end);
            }
            let now = Instant::now();
            if now.duration_since(last_scan) >= TICK {
                last_scan = now;
                for i in 0..self.conns.len() {
                    let c = &self.conns[i];
                    if c.state != State::Idle && now.duration_since(c.t0) > timeout {
                        self.fail(i, "timeout");
                    }
                }
            }
        }
        self.part.abandoned = self.conns.iter().filter(|c| c.state != State::Idle).count() as u64;
        self.conns.clear();
        Ok(self.part)
    }

    fn open(&mut self, i: usize) {
        let now = Instant::now();
        let conn = &mut self.conns[i];
        conn.t0 = now;
        match sys::tcp_connect(&self.common.connect, self.common.bind).and_then(|(fd, _)| {
            self.epoll
                .add(fd.as_raw_fd(), EPOLLOUT, i as u64)
                .map(|_| fd)
        }) {
            Ok(fd) => {
                conn.fd = Some(fd);
                conn.state = State::Connecting;
                conn.interest = EPOLLOUT;
                if !self.crr {
                    // Best effort: only latency suffers without it.
                    let _ = conn.fd.as_ref().map(sys::set_nodelay);
                }
            }
            Err(e) => {
                conn.retry_at = now + Duration::from_millis(1);
                self.part.failed += 1;
                self.part.errors.add_io(&e);
            }
        }
    }

    fn fail(&mut self, i: usize, why: &str) {
        let conn = &mut self.conns[i];
        conn.fd = None;
        conn.state = State::Idle;
        conn.retry_at = Instant::now() + Duration::from_millis(1);
        self.part.failed += 1;
        self.part.errors.add(why);
    }

    fn fail_io(&mut self, i: usize, e: &io::Error) {
        self.fail(i, &sys::error_name(e));
    }

    fn set_interest(&mut self, i: usize, interest: u32) -> io::Result<()> {
        let conn = &mut self.conns[i];
        if conn.interest != interest {
            if let Some(fd) = conn.raw() {
                self.epoll.modify(fd, interest, i as u64)?;
            }
            conn.interest = interest;
        }
        Ok(())
    }

    /// Sends (the rest of) the request from `off`; moves to Receiving once
    /// it is all in the socket.
    fn send_request(&mut self, i: usize, off: usize) {
        let Some(fd) = self.conns[i].raw() else {
            return;
        };
        let sent = match send_some(fd, &self.request[off..]) {
            Ok(n) => off + n,
            Err(e) => return self.fail_io(i, &e),
        };
        let (state, interest) = if sent == self.request.len() {
            (State::Receiving { got: 0 }, EPOLLIN)
        } else {
            (State::Sending { off: sent }, EPOLLOUT)
        };
        self.conns[i].state = state;
        if let Err(e) = self.set_interest(i, interest) {
            self.fail_io(i, &e);
        }
    }

    fn on_event(&mut self, i: usize, flags: u32, end: Instant) {
        let Some(conn) = self.conns.get(i) else {
            return;
        };
        match conn.state {
            State::Idle => {}
            State::Connecting => {
                if flags & (EPOLLOUT | EPOLLERR | EPOLLHUP) == 0 {
                    return;
                }
                let Some(fd) = conn.raw() else { return };
                match sys::take_error(fd) {
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => return self.fail_io(i, &e),
                }
                if !self.crr {
                    // RR latency is per transaction, not per connect.
                    self.conns[i].t0 = Instant::now();
                }
                self.send_request(i, 0);
            }
            State::Sending { off } => self.send_request(i, off),
            State::Receiving { .. } | State::AwaitFin => self.receive(i, end),
        }
    }

    fn receive(&mut self, i: usize, end: Instant) {
        let size = self.request.len();
        let mut scratch = [0u8; 4096];
        for _ in 0..READS_PER_EVENT {
            let Some(fd) = self.conns[i].raw() else {
                return;
            };
            let state = self.conns[i].state;
            let want = match state {
                State::Receiving { got } => (size - got).min(scratch.len()),
                // Anything but the FIN here is a protocol error; read a
                // little to tell which.
                _ => 16,
            };
            let n = match sys::recv(fd, &mut scratch[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail_io(i, &e),
            };
            match state {
                State::Receiving { got } => {
                    if n == 0 {
                        return self.fail(i, "eof");
                    }
                    // The echo must start with our header (catches a
                    // client pointed at some other service).
                    if got < HEADER_LEN {
                        let upto = HEADER_LEN.min(got + n);
                        if scratch[..upto - got] != self.request[got..upto] {
                            return self.fail(i, "bad_response");
                        }
                    }
                    let got = got + n;
                    if got < size {
                        self.conns[i].state = State::Receiving { got };
                        continue;
                    }
                    if self.crr {
                        self.conns[i].state = State::AwaitFin;
                        continue;
                    }
                    // RR: transaction done, start the next one right away.
                    let now = Instant::now();
                    self.part
                        .latency
                        .record(now.duration_since(self.conns[i].t0));
                    self.part.done += 1;
                    self.part.ended = Some(now);
                    if now >= end {
                        self.conns[i].state = State::Idle;
                        self.conns[i].fd = None;
                        return;
                    }
                    self.conns[i].t0 = now;
                    return self.send_request(i, 0);
                }
                _ => {
                    if n > 0 {
                        return self.fail(i, "unexpected_data");
                    }
                    // The server's FIN: close our side second (no TIME_WAIT
                    // here) and start over in this slot.
                    let now = Instant::now();
                    self.part
                        .latency
                        .record(now.duration_since(self.conns[i].t0));
                    self.part.done += 1;
                    self.part.ended = Some(now);
                    let conn = &mut self.conns[i];
                    conn.fd = None;
                    conn.state = State::Idle;
                    conn.retry_at = now;
                    if now < end {
                        self.open(i);
                    }
                    return;
                }
            }
        }
    }
}
