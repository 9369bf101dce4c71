//! `tcp-hold-server` / `tcp-hold-clients`: many concurrent, mostly idle TCP
//! connections (NAT table occupancy, port allocation, per-process ceilings).
//!
//! The client opens `--count` connections with non-blocking connects driven
//! by one epoll loop (at most `--max-pending` in flight, optionally paced by
//! `--rate`), proves each path end to end with a 16-byte request that must
//! come back verbatim, holds them all, then closes gracefully: our FIN, the
//! server's FIN in answer, then close(), so every connection ends with a
//! full FIN handshake rather than a reset.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::{
    runtime::{self, Deadline, TICK},
    server::{self, Behavior},
    stats::{ErrorCounts, Histogram, LatencySummary},
    sys::{self, Epoll, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT},
    Outcome,
};

/// The options of the echo server of tcp-hold-clients.
pub type ServerArgs = server::ListenArgs;

#[derive(Serialize)]
struct ServerReport {
    listen: String,
    accepted: u64,
    closed: u64,
    peak_open: u64,
    peers_distinct: usize,
    /// Sorted, at most 1000 listed.
    peer_ips: Vec<String>,
    bytes_echoed: u64,
    errors: ErrorCounts,
    expect: Option<u64>,
    seconds: f64,
}

pub fn run_server(args: &ServerArgs, deadline: &Deadline) -> Result<Outcome> {
    // One thread by default: holding connections is about counts, not throughput.
    let totals = server::run(&args.config(1, Behavior::EchoRaw), deadline)?;
    let report = ServerReport {
        listen: totals.listen.map(|a| a.to_string()).unwrap_or_default(),
        accepted: totals.accepted,
        closed: totals.closed,
        peak_open: totals.peak_open,
        peers_distinct: totals.peers.len(),
        peer_ips: totals.peer_list(1000),
        bytes_echoed: totals.bytes,
        errors: totals.errors.clone(),
        expect: args.expect,
        seconds: crate::stats::round3(totals.seconds),
    };
    Outcome::new(&report, totals.expect_met(args.expect).err())
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Server to connect to.
    #[arg(long, value_name = "IP:PORT")]
    connect: SocketAddr,
    /// Connections to open and hold (one descriptor each: at most the open-file limit minus a few).
    #[arg(long, value_name = "N")]
    count: usize,
    /// Source address (the port is still chosen per connection by the kernel).
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// Take source ports from this range in order instead of letting connect() pick
    /// (deterministic ports; avoids connect()'s slow path past half the ephemeral range).
    #[arg(long, value_name = "LO-HI", value_parser = parse_port_range)]
    source_ports: Option<(u16, u16)>,
    /// Seconds to hold once all are up (ignored with --release-file).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    hold: f64,
    /// New connections per second (default: as fast as --max-pending allows).
    #[arg(long, value_name = "CONNS_PER_SEC")]
    rate: Option<f64>,
    /// Connects (and echo round trips) in flight at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_pending: usize,
    /// Seconds a connection may take to connect and echo before it counts as failed.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    connect_timeout: f64,
    /// Created (containing "established N") once every connection is up or failed.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Hold until this file exists (instead of --hold), capped by --duration.
    #[arg(long, value_name = "PATH")]
    release_file: Option<PathBuf>,
    /// Seconds to wait for the server's FIN after ours before closing anyway.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    close_timeout: f64,
}

#[derive(Serialize)]
struct ClientReport {
    target: String,
    requested: usize,
    attempted: usize,
    established: u64,
    echoed: u64,
    failed: u64,
    /// errno name (or "timeout", "eof", "echo_mismatch", "deadline") -> count.
    connect_errors: ErrorCounts,
    /// Held connections the server closed or reset before we released them.
    lost_during_hold: u64,
    /// Connections whose close saw the server's FIN answer ours in time.
    closed_clean: u64,
    setup_seconds: f64,
    held_seconds: f64,
    /// Connect + echo round trip per connection.
    setup_latency: LatencySummary,
    nofile_limit: u64,
    /// The namespace's net.ipv4.ip_local_port_range.
    local_port_range: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Connecting,
    AwaitEcho,
    Held,
    Closing,
    Done,
}

struct Slot {
    fd: Option<OwnedFd>,
    state: State,
    /// Echo bytes verified so far.
    got: usize,
    started: Instant,
}

const REQUEST_LEN: usize = 16;

/// The request for connection `i`: unique per connection, so an echo that
/// comes back on the wrong socket is caught.
fn request(i: usize) -> [u8; REQUEST_LEN] {
    let mut msg = *b"hold00000000000\n";
    let mut v = i;
    for digit in msg[4..15].iter_mut().rev() {
        *digit = b'0' + (v % 10) as u8;
        v /= 10;
    }
    msg
}

struct Client<'a> {
    args: &'a ClientArgs,
    epoll: Epoll,
    slots: Vec<Slot>,
    /// Connects/echoes in flight.
    pending: usize,
    /// Slots that reached Held or failed.
    settled: usize,
    /// Slots in Closing.
    closing: usize,
    established: u64,
    echoed: u64,
    failed: u64,
    lost: u64,
    closed_clean: u64,
    errors: ErrorCounts,
    latency: Histogram,
    /// Next port to try with --source-ports.
    next_port: u16,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').ok_or("expected LO-HI")?;
    let lo: u16 = lo.trim().parse().map_err(|e| format!("{lo:?}: {e}"))?;
    let hi: u16 = hi.trim().parse().map_err(|e| format!("{hi:?}: {e}"))?;
    if lo == 0 || lo > hi {
        return Err("need 1 <= LO <= HI".to_string());
    }
    Ok((lo, hi))
}

/// Tries per connection to find a usable port with --source-ports.
const PORT_TRIES: usize = 64;

pub fn run_clients(args: &ClientArgs, deadline: &Deadline) -> Result<Outcome> {
    let limit = sys::nofile_limit();
    // stdio, epoll and a little slack besides one descriptor per connection.
    if args.count as u64 + 16 > limit {
        bail!(
            "--count {} needs {} descriptors but the open-file limit is {limit}",
            args.count,
            args.count + 16
        );
    }
    if args.count == 0 || args.max_pending == 0 {
        bail!("--count and --max-pending must be at least 1");
    }
    let port_range = sys::local_port_range();
    match (args.source_ports, port_range) {
        (Some((lo, hi)), _) if args.count > usize::from(hi - lo) + 1 => {
            bail!(
                "--count {} is more than the {} ports of --source-ports",
                args.count,
                hi - lo + 1
            )
        }
        // Since Linux 4.6, connect() first tries only the even ports of the
        // range; once those are taken for this destination, every further
        // connect() scans all of them before trying an odd one, and setup
        // slows from ~100 us to milliseconds per connection.
        (None, Some((lo, hi))) if args.count > usize::from(hi - lo).div_ceil(2) => eprintln!(
            "note: {} connections to one destination exceed half of ip_local_port_range \
             {lo}-{hi}: connect() gets slow past ~{}; consider --source-ports",
            args.count,
            usize::from(hi - lo).div_ceil(2)
        ),
        _ => {}
    }
    let mut c = Client {
        args,
        epoll: Epoll::new().context("epoll_create")?,
        slots: Vec::with_capacity(args.count),
        pending: 0,
        settled: 0,
        closing: 0,
        established: 0,
        echoed: 0,
        failed: 0,
        lost: 0,
        closed_clean: 0,
        errors: ErrorCounts::default(),
        latency: Histogram::default(),
        next_port: args.source_ports.map_or(0, |(lo, _)| lo),
    };
    let mut events = sys::event_buffer(1024);

    let start = Instant::now();
    c.open_all(deadline, &mut events, start)?;
    let setup_done = Instant::now();

    eprintln!("established {}", c.echoed);
    if let Some(path) = &args.ready_file {
        runtime::write_signal_file(path, &format!("established {}\n", c.echoed))?;
    }
    c.hold(deadline, &mut events)?;
    let released = Instant::now();
    let attempted = c.slots.len();
    c.close_all(deadline, &mut events)?;

    let report = ClientReport {
        target: args.connect.to_string(),
        requested: args.count,
        attempted,
        established: c.established,
        echoed: c.echoed,
        failed: c.failed,
        connect_errors: c.errors.clone(),
        lost_during_hold: c.lost,
        closed_clean: c.closed_clean,
        setup_seconds: crate::stats::round3(runtime::secs_between(start, setup_done)),
        held_seconds: crate::stats::round3(runtime::secs_between(setup_done, released)),
        setup_latency: c.latency.summary(),
        nofile_limit: limit,
        local_port_range: port_range.map(|(lo, hi)| format!("{lo}-{hi}")),
    };
    let failure = (c.echoed < args.count as u64).then(|| {
        format!(
            "only {} of {} connections were established and echoed",
            c.echoed, args.count
        )
    });
    Outcome::new(&report, failure)
}

impl Client<'_> {
    fn open_all(
        &mut self,
        deadline: &Deadline,
        events: &mut [libc::epoll_event],
        start: Instant,
    ) -> Result<()> {
        let count = self.args.count;
        let timeout = Duration::from_secs_f64(self.args.connect_timeout.max(0.001));
        let mut last_scan = start;
        while self.settled < count && !deadline.expired() {
            let elapsed = start.elapsed().as_secs_f64();
            let allowed = match self.args.rate {
                Some(r) => ((r * elapsed) as usize + 1).min(count),
                None => count,
            };
            // At most 256 launches per pass, so completions are processed
            // between bursts.
            let mut launched = 0;
            while self.slots.len() < allowed
                && self.pending < self.args.max_pending
                && launched < 256
            {
                self.launch();
                launched += 1;
            }
            let wait = match self.args.rate {
                Some(r) if self.slots.len() < count && self.pending < self.args.max_pending => {
                    let next_due = self.slots.len() as f64 / r;
                    Duration::from_secs_f64((next_due - start.elapsed().as_secs_f64()).max(0.0))
                }
                _ if launched == 256 => Duration::ZERO,
                _ => TICK,
            };
            let n = self
                .epoll
                .wait(events, deadline.wait_for(wait.min(TICK)))
                .context("epoll_wait")?;
            for ev in &events[..n] {
                let (token, flags) = (ev.u64, ev.events);
                self.on_event(token as usize, flags);
            }
            let now = Instant::now();
            if now.duration_since(last_scan) >= TICK {
                last_scan = now;
                for i in 0..self.slots.len() {
                    let s = &self.slots[i];
                    if matches!(s.state, State::Connecting | State::AwaitEcho)
                        && now.duration_since(s.started) > timeout
                    {
                        self.fail(i, "timeout");
                    }
                }
            }
        }
        // Cut short by the deadline: whatever is still in flight failed.
        for i in 0..self.slots.len() {
            if matches!(self.slots[i].state, State::Connecting | State::AwaitEcho) {
                self.fail(i, "deadline");
            }
        }
        Ok(())
    }

    fn launch(&mut self) {
        let i = self.slots.len();
        self.slots.push(Slot {
            fd: None,
            state: State::Connecting,
            got: 0,
            started: Instant::now(),
        });
        self.pending += 1;
        let fd = match self.connect() {
            Ok((fd, _)) => fd,
            Err(e) => return self.fail_io(i, &e),
        };
        // Writable = connect finished (either way); ERR/HUP are implicit.
        if let Err(e) = self.epoll.add(fd.as_raw_fd(), EPOLLOUT, i as u64) {
            return self.fail_io(i, &e);
        }
        self.slots[i].fd = Some(fd);
    }

    /// Starts one connect, from the next free --source-ports port if given.
    fn connect(&mut self) -> io::Result<(OwnedFd, bool)> {
        let Some((lo, hi)) = self.args.source_ports else {
            return sys::tcp_connect(&self.args.connect, self.args.bind);
        };
        let mut last = io::Error::from_raw_os_error(libc::EADDRINUSE);
        for _ in 0..PORT_TRIES {
            let port = self.next_port;
            self.next_port = if port >= hi { lo } else { port + 1 };
            match sys::tcp_connect_from_port(&self.args.connect, self.args.bind, port) {
                // Taken by someone else (bind) or this 4-tuple still in
                // TIME_WAIT (connect): try the next port.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
                    ) =>
                {
                    last = e
                }
                other => return other,
            }
        }
        Err(last)
    }

    fn fail_io(&mut self, i: usize, err: &io::Error) {
        self.fail(i, &sys::error_name(err));
    }

    fn fail(&mut self, i: usize, why: &str) {
        let slot = &mut self.slots[i];
        if matches!(slot.state, State::Connecting | State::AwaitEcho) {
            self.pending -= 1;
            self.settled += 1;
        }
        slot.state = State::Done;
        slot.fd = None;
        self.failed += 1;
        self.errors.add(why);
    }

    fn on_event(&mut self, i: usize, flags: u32) {
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        let Some(fd) = slot.fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        match slot.state {
            State::Connecting => {
                if flags & (EPOLLOUT | EPOLLERR | EPOLLHUP) == 0 {
                    return;
                }
                match sys::take_error(fd) {
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => return self.fail_io(i, &e),
                }
                self.established += 1;
                let req = request(i);
                match server::send_some(fd, &req) {
                    Ok(REQUEST_LEN) => {}
                    Ok(_) => return self.fail(i, "short_write"),
                    Err(e) => return self.fail_io(i, &e),
                }
                if let Err(e) = self.epoll.modify(fd, EPOLLIN, i as u64) {
                    return self.fail_io(i, &e);
                }
                self.slots[i].state = State::AwaitEcho;
            }
            State::AwaitEcho => {
                let got = slot.got;
                let mut buf = [0u8; REQUEST_LEN];
                match sys::recv(fd, &mut buf[..REQUEST_LEN - got]) {
                    Ok(0) => self.fail(i, "eof"),
                    Ok(n) => {
                        if buf[..n] != request(i)[got..got + n] {
                            return self.fail(i, "echo_mismatch");
                        }
                        let slot = &mut self.slots[i];
                        slot.got += n;
                        if slot.got == REQUEST_LEN {
                            slot.state = State::Held;
                            self.latency.record(slot.started.elapsed());
                            self.echoed += 1;
                            self.pending -= 1;
                            self.settled += 1;
                        }
                    }
                    Err(e) if is_transient(&e) => {}
                    Err(e) => self.fail_io(i, &e),
                }
            }
            State::Held => {
                // Nothing should arrive while held: EOF or an error means the
                // server (or something in between) dropped the connection.
                let mut buf = [0u8; 64];
                match sys::recv(fd, &mut buf) {
                    Ok(n) if n > 0 => {}
                    Err(e) if is_transient(&e) => {}
                    _ => {
                        self.lost += 1;
                        let slot = &mut self.slots[i];
                        slot.state = State::Done;
                        slot.fd = None;
                    }
                }
            }
            State::Closing => {
                let mut buf = [0u8; 64];
                match sys::recv(fd, &mut buf) {
                    Ok(n) if n > 0 => return,
                    Err(e) if is_transient(&e) => return,
                    Ok(_) => self.closed_clean += 1,
                    Err(_) => {}
                }
                self.closing -= 1;
                let slot = &mut self.slots[i];
                slot.state = State::Done;
                slot.fd = None;
            }
            State::Done => {}
        }
    }

    fn hold(&mut self, deadline: &Deadline, events: &mut [libc::epoll_event]) -> Result<()> {
        let hold_end = match &self.args.release_file {
            Some(_) => deadline.end,
            None => Instant::now() + Duration::from_secs_f64(self.args.hold.max(0.0)),
        };
        // Bounded by the deadline; the release file is polled every 50 ms.
        loop {
            if deadline.expired() || Instant::now() >= hold_end {
                return Ok(());
            }
            if self.args.release_file.as_ref().is_some_and(|p| p.exists()) {
                return Ok(());
            }
            let wait = hold_end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            let n = self
                .epoll
                .wait(events, deadline.wait_for(wait))
                .context("epoll_wait")?;
            for ev in &events[..n] {
                let (token, flags) = (ev.u64, ev.events);
                self.on_event(token as usize, flags);
            }
        }
    }

    fn close_all(&mut self, deadline: &Deadline, events: &mut [libc::epoll_event]) -> Result<()> {
        for slot in &mut self.slots {
            if slot.state != State::Held {
                continue;
            }
            if let Some(fd) = &slot.fd {
                if sys::shutdown_write(fd.as_raw_fd()).is_ok() {
                    slot.state = State::Closing;
                    self.closing += 1;
                    continue;
                }
            }
            slot.state = State::Done;
            slot.fd = None;
        }
        // Wait for the server's FINs, but never past the hard deadline: if it
        // has come, close at once (the kernel still finishes each handshake).
        let end = (Instant::now() + Duration::from_secs_f64(self.args.close_timeout.max(0.0)))
            .min(deadline.end);
        while self.closing > 0 && Instant::now() < end && !runtime::stop_requested() {
            let wait = end.saturating_duration_since(Instant::now()).min(TICK);
            let n = self.epoll.wait(events, wait).context("epoll_wait")?;
            for ev in &events[..n] {
                let (token, flags) = (ev.u64, ev.events);
                self.on_event(token as usize, flags);
            }
        }
        self.slots.clear();
        Ok(())
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_ranges() {
        assert_eq!(super::parse_port_range("20000-39999"), Ok((20000, 39999)));
        assert!(super::parse_port_range("0-10").is_err());
        assert!(super::parse_port_range("10-9").is_err());
        assert!(super::parse_port_range("10").is_err());
    }

    #[test]
    fn requests_are_unique_and_fixed_size() {
        assert_eq!(&super::request(0), b"hold00000000000\n");
        assert_eq!(&super::request(19_999), b"hold00000019999\n");
        assert_ne!(super::request(1), super::request(10));
    }
}
