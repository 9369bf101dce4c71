//! `tcp-stream-server` / `tcp-stream`: bulk TCP throughput.
//!
//! The client writes one preallocated buffer as fast as each socket takes it
//! on `--flows` connections, until `--seconds` (or `--bytes` per flow). Then
//! it half-closes and waits for the server's FIN: the server only closes
//! after reading everything up to our FIN, so once every FIN is back, every
//! byte counted was delivered to the server application, and the clock
//! stops there. Client and server byte counts therefore match exactly.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::{
    runtime::{self, Deadline, TICK},
    server::{self, Behavior},
    stats::{self, ErrorCounts},
    sys::{self, Epoll, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT},
    Outcome,
};

/// The options of the sink of tcp-stream.
pub type ServerArgs = server::ListenArgs;

#[derive(Serialize)]
struct ServerReport {
    listen: String,
    threads: usize,
    accepted: u64,
    closed: u64,
    bytes: u64,
    /// From the first byte received to the last.
    seconds: f64,
    gbit_per_sec: f64,
    errors: ErrorCounts,
    expect: Option<u64>,
}

pub fn run_server(args: &ServerArgs, deadline: &Deadline) -> Result<Outcome> {
    let cfg = args.config(runtime::default_threads(usize::MAX), Behavior::Discard);
    let threads = cfg.threads;
    let totals = server::run(&cfg, deadline)?;
    let secs = totals.data_seconds();
    let report = ServerReport {
        listen: totals.listen.map(|a| a.to_string()).unwrap_or_default(),
        threads,
        accepted: totals.accepted,
        closed: totals.closed,
        bytes: totals.bytes,
        seconds: stats::round3(secs),
        gbit_per_sec: stats::gbit_per_sec(totals.bytes, secs),
        errors: totals.errors.clone(),
        expect: args.expect,
    };
    Outcome::new(&report, totals.expect_met(args.expect).err())
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Server to send to.
    #[arg(long, value_name = "IP:PORT")]
    connect: SocketAddr,
    /// Parallel connections.
    #[arg(long, value_name = "F", default_value_t = 1)]
    flows: usize,
    /// Seconds to send for (must end before --duration).
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub seconds: f64,
    /// Stop each flow after this many bytes (whichever comes first with --seconds).
    #[arg(long, value_name = "B")]
    bytes: Option<u64>,
    /// Sender threads; default: one per CPU, at most one per flow.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Source address.
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// Bytes per send() call.
    #[arg(long, value_name = "BYTES", default_value_t = 128 << 10)]
    write_size: usize,
}

#[derive(Serialize)]
struct ClientReport {
    target: String,
    flows: usize,
    threads: usize,
    bytes: u64,
    /// From the start to the last server FIN (all data delivered).
    seconds: f64,
    gbit_per_sec: f64,
    per_flow_bytes: Vec<u64>,
    failed: u64,
    /// Flows whose delivery was not confirmed by the server's FIN in time.
    undrained: u64,
    errors: ErrorCounts,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Sending,
    Draining,
    Done,
}

struct Flow {
    /// Index among all flows (for per_flow_bytes).
    index: usize,
    /// Position in this thread's table: the epoll token.
    token: u64,
    fd: Option<OwnedFd>,
    state: State,
    sent: u64,
    done_at: Option<Instant>,
}

#[derive(Default)]
struct Part {
    per_flow: Vec<(usize, u64)>,
    last_done: Option<Instant>,
    failed: u64,
    undrained: u64,
    errors: ErrorCounts,
}

pub fn run_client(args: &ClientArgs, deadline: &Deadline) -> Result<Outcome> {
    if args.flows == 0 || args.write_size == 0 {
        bail!("--flows and --write-size must be at least 1");
    }
    if args.flows as u64 + 16 > sys::nofile_limit() {
        bail!("--flows {} exceeds the open-file limit", args.flows);
    }
    let threads = args
        .threads
        .unwrap_or_else(|| runtime::default_threads(args.flows))
        .clamp(1, args.flows);
    let start = Instant::now();
    let send_end = deadline.window_end(start, args.seconds);
    let inputs: Vec<Vec<usize>> = (0..threads)
        .map(|t| (t..args.flows).step_by(threads).collect())
        .collect();
    let parts = runtime::run_workers(inputs, |_, flows| {
        send_flows(args, deadline, send_end, &flows)
    })?;

    let mut per_flow = vec![0u64; args.flows];
    let mut total = Part::default();
    for p in parts {
        for (i, b) in p.per_flow {
            per_flow[i] = b;
        }
        total.last_done = total.last_done.max(p.last_done);
        total.failed += p.failed;
        total.undrained += p.undrained;
        total.errors.merge(&p.errors);
    }
    let bytes: u64 = per_flow.iter().sum();
    // Undrained flows make the end "now": delivery is unconfirmed.
    let end = if total.undrained > 0 || total.last_done.is_none() {
        Instant::now()
    } else {
        total.last_done.unwrap_or_else(Instant::now)
    };
    let secs = runtime::secs_between(start, end);
    let report = ClientReport {
        target: args.connect.to_string(),
        flows: args.flows,
        threads,
        bytes,
        seconds: stats::round3(secs),
        gbit_per_sec: stats::gbit_per_sec(bytes, secs),
        per_flow_bytes: per_flow,
        failed: total.failed,
        undrained: total.undrained,
        errors: total.errors,
    };
    let failure = if report.failed > 0 {
        Some(format!("{} of {} flows failed", report.failed, args.flows))
    } else if report.undrained > 0 {
        Some(format!(
            "{} flows not confirmed by the server's FIN before the deadline",
            report.undrained
        ))
    } else if bytes == 0 {
        Some("no bytes sent".to_string())
    } else {
        None
    };
    Outcome::new(&report, failure)
}

/// send() calls per writable event before serving the other flows.
const WRITES_PER_EVENT: usize = 16;

fn send_flows(
    args: &ClientArgs,
    deadline: &Deadline,
    send_end: Instant,
    indices: &[usize],
) -> Result<Part> {
    let epoll = Epoll::new().context("epoll_create")?;
    let buf: Vec<u8> = (0..args.write_size).map(|i| (i % 251) as u8).collect();
    let limit = args.bytes.unwrap_or(u64::MAX);
    let mut part = Part::default();
    let mut flows: Vec<Flow> = Vec::with_capacity(indices.len());
    for (k, &index) in indices.iter().enumerate() {
        let mut flow = Flow {
            index,
            token: k as u64,
            fd: None,
            state: State::Connecting,
            sent: 0,
            done_at: None,
        };
        match sys::tcp_connect(&args.connect, args.bind)
            .and_then(|(fd, _)| epoll.add(fd.as_raw_fd(), EPOLLOUT, k as u64).map(|_| fd))
        {
            Ok(fd) => flow.fd = Some(fd),
            Err(e) => {
                part.errors.add_io(&e);
                part.failed += 1;
                flow.state = State::Done;
            }
        }
        flows.push(flow);
    }

    let mut events = sys::event_buffer(64);
    let mut sending = true;
    // Flows are few, so recounting the live ones each pass is cheap and
    // cannot drift from the states.
    while flows.iter().any(|f| f.state != State::Done) && !deadline.expired() {
        if sending && Instant::now() >= send_end {
            sending = false;
            for flow in flows.iter_mut() {
                match flow.state {
                    State::Sending => begin_drain(&epoll, flow, &mut part),
                    State::Connecting => fail(flow, &mut part, "not_connected"),
                    _ => {}
                }
            }
            continue;
        }
        let wait = if sending {
            send_end.saturating_duration_since(Instant::now()).min(TICK)
        } else {
            TICK
        };
        let n = epoll
            .wait(&mut events, deadline.wait_for(wait))
            .context("epoll_wait")?;
        for ev in &events[..n] {
            let (k, flags) = (ev.u64 as usize, ev.events);
            let Some(flow) = flows.get_mut(k) else {
                continue;
            };
            let Some(fd) = flow.fd.as_ref().map(|f| f.as_raw_fd()) else {
                continue;
            };
            if flow.state == State::Connecting {
                if flags & (EPOLLOUT | EPOLLERR | EPOLLHUP) == 0 {
                    continue;
                }
                match sys::take_error(fd) {
                    Ok(None) => flow.state = State::Sending,
                    Ok(Some(e)) | Err(e) => {
                        fail_io(flow, &mut part, &e);
                        continue;
                    }
                }
            }
            match flow.state {
                State::Sending => {
                    for _ in 0..WRITES_PER_EVENT {
                        let want = (limit - flow.sent).min(buf.len() as u64) as usize;
                        if want == 0 {
                            begin_drain(&epoll, flow, &mut part);
                            break;
                        }
                        match sys::send(fd, &buf[..want]) {
                            Ok(n) => flow.sent += n as u64,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                fail_io(flow, &mut part, &e);
                                break;
                            }
                        }
                    }
                }
                State::Draining => {
                    let mut scratch = [0u8; 512];
                    match sys::recv(fd, &mut scratch) {
                        Ok(0) => {
                            flow.state = State::Done;
                            flow.done_at = Some(Instant::now());
                            flow.fd = None;
                        }
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => fail_io(flow, &mut part, &e),
                    }
                }
                _ => {}
            }
        }
    }
    for flow in &flows {
        if matches!(flow.state, State::Sending | State::Draining) {
            part.undrained += 1;
        }
        part.per_flow.push((flow.index, flow.sent));
        part.last_done = part.last_done.max(flow.done_at);
    }
    Ok(part)
}

/// Half-close: our FIN follows the data; the server answers with its FIN
/// once it has read everything.
fn begin_drain(epoll: &Epoll, flow: &mut Flow, part: &mut Part) {
    let Some(fd) = flow.fd.as_ref().map(|f| f.as_raw_fd()) else {
        return;
    };
    match sys::shutdown_write(fd).and_then(|_| epoll.modify(fd, EPOLLIN, flow.token)) {
        Ok(()) => flow.state = State::Draining,
        Err(e) => fail_io(flow, part, &e),
    }
}

fn fail_io(flow: &mut Flow, part: &mut Part, e: &io::Error) {
    part.errors.add_io(e);
    part.failed += 1;
    flow.state = State::Done;
    flow.fd = None;
}

fn fail(flow: &mut Flow, part: &mut Part, why: &str) {
    part.errors.add(why);
    part.failed += 1;
    flow.state = State::Done;
    flow.fd = None;
}
