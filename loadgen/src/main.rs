//! `bpfnat-loadgen`: load generators and sinks for bpfnat's end-to-end tests
//! and benchmark (netperf is not packaged on Debian, and iperf3 cannot hold
//! thousands of connections, do CRR or pace UDP packets).
//!
//! Every mode prints exactly one JSON object on stdout when it ends, with
//! `"mode"` and `"ok"`, plus `"failure"` (its own success criterion failed,
//! exit 1) or `"error"` (it could not run at all, exit 2). Progress lines
//! ("listening ...", "established N") go to stderr. `--duration` is a hard
//! cap on every mode, and SIGINT/SIGTERM end a run early with its JSON.

mod netns;
mod proto;
mod rr;
mod runtime;
mod server;
mod stats;
mod stream;
mod sys;
mod tcp_hold;
mod udp;

use std::{process::ExitCode, time::Duration};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "bpfnat-loadgen",
    version,
    about = "TCP/UDP load generators and sinks for bpfnat's tests and benchmark"
)]
struct Cli {
    /// Enter this named network namespace (/run/netns/NAME) before opening anything.
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    /// Hard cap on the whole run in seconds, whatever the mode is waiting for.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30.0)]
    duration: f64,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Accept connections, echo what they send, keep them until the peer closes.
    TcpHoldServer(tcp_hold::ServerArgs),
    /// Open N concurrent connections, verify an echo on each, hold them, close them gracefully.
    TcpHoldClients(tcp_hold::ClientArgs),
    /// Accept connections and discard what they send, counting bytes.
    TcpStreamServer(stream::ServerArgs),
    /// Bulk throughput: send as fast as possible on F connections.
    TcpStream(stream::ClientArgs),
    /// Echo framed request/response messages (serves tcp-rr and tcp-crr).
    TcpRrServer(rr::ServerArgs),
    /// Request/response over persistent connections: rate and latency.
    TcpRr(rr::RrArgs),
    /// A new connection per transaction: connect, request, response, close.
    TcpCrr(rr::CrrArgs),
    /// Receive UDP (recvmmsg) and count packets; optionally echo them.
    UdpSink(udp::SinkArgs),
    /// Send UDP (sendmmsg) as fast as possible or at a fixed rate.
    UdpFlood(udp::FloodArgs),
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::TcpHoldServer(_) => "tcp-hold-server",
            Mode::TcpHoldClients(_) => "tcp-hold-clients",
            Mode::TcpStreamServer(_) => "tcp-stream-server",
            Mode::TcpStream(_) => "tcp-stream",
            Mode::TcpRrServer(_) => "tcp-rr-server",
            Mode::TcpRr(_) => "tcp-rr",
            Mode::TcpCrr(_) => "tcp-crr",
            Mode::UdpSink(_) => "udp-sink",
            Mode::UdpFlood(_) => "udp-flood",
        }
    }

    /// The measurement window of the modes that have one.
    fn seconds(&self) -> Option<f64> {
        match self {
            Mode::TcpStream(a) => Some(a.seconds),
            Mode::TcpRr(a) => Some(a.common.seconds),
            Mode::TcpCrr(a) => Some(a.common.seconds),
            Mode::UdpFlood(a) => Some(a.seconds),
            _ => None,
        }
    }
}

/// A mode's result: its report, and why its success criterion failed if it did.
pub struct Outcome {
    report: Value,
    failure: Option<String>,
}

impl Outcome {
    pub fn new<T: Serialize>(report: &T, failure: Option<String>) -> Result<Self> {
        Ok(Outcome {
            report: serde_json::to_value(report)?,
            failure,
        })
    }
}

/// Longest allowed --duration: a day. Anything longer is a typo.
const MAX_DURATION: f64 = 86_400.0;

fn validate(cli: &Cli) -> Result<Duration> {
    if !(cli.duration.is_finite() && cli.duration > 0.0 && cli.duration <= MAX_DURATION) {
        bail!("--duration must be between 0 and {MAX_DURATION} seconds");
    }
    if let Some(secs) = cli.mode.seconds() {
        if !(secs.is_finite() && secs > 0.0 && secs < cli.duration) {
            bail!(
                "--seconds {secs} must be positive and below --duration {} \
                 (which also has to cover connecting and draining)",
                cli.duration
            );
        }
    }
    Ok(Duration::from_secs_f64(cli.duration))
}

fn run(cli: &Cli) -> Result<Outcome> {
    let duration = validate(cli)?;
    // Before anything else, while the process has a single thread: every
    // socket and thread made afterwards lives in the namespace.
    if let Some(name) = &cli.netns {
        netns::enter(name)?;
    }
    // One socket is one descriptor: lift the soft limit to the hard one.
    // Failure is not fatal; the modes check the limit they actually need.
    if let Err(e) = sys::raise_nofile_limit() {
        eprintln!("bpfnat-loadgen: cannot raise RLIMIT_NOFILE: {e}");
    }
    runtime::install_signal_handlers();
    let deadline = runtime::Deadline::new(duration);
    match &cli.mode {
        Mode::TcpHoldServer(a) => tcp_hold::run_server(a, &deadline),
        Mode::TcpHoldClients(a) => tcp_hold::run_clients(a, &deadline),
        Mode::TcpStreamServer(a) => stream::run_server(a, &deadline),
        Mode::TcpStream(a) => stream::run_client(a, &deadline),
        Mode::TcpRrServer(a) => rr::run_server(a, &deadline),
        Mode::TcpRr(a) => rr::run_rr(a, &deadline),
        Mode::TcpCrr(a) => rr::run_crr(a, &deadline),
        Mode::UdpSink(a) => udp::run_sink(a, &deadline),
        Mode::UdpFlood(a) => udp::run_flood(a, &deadline),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = cli.mode.name();
    let (mut report, code, problem) = match run(&cli) {
        Ok(Outcome { report, failure }) => {
            let code = if failure.is_some() { 1 } else { 0 };
            let mut head = json!({ "mode": mode, "ok": failure.is_none() });
            if let Some(f) = &failure {
                head["failure"] = json!(f);
            }
            (merge(head, report), code, failure)
        }
        Err(e) => {
            let msg = format!("{e:#}");
            (
                json!({ "mode": mode, "ok": false, "error": msg }),
                2,
                Some(msg),
            )
        }
    };
    if let Some(p) = &problem {
        eprintln!("bpfnat-loadgen {mode}: {p}");
    }
    if let Some(ns) = &cli.netns {
        report["netns"] = json!(ns);
    }
    println!("{report}");
    ExitCode::from(code)
}

/// The report's fields added to `head` (serde_json sorts keys anyway).
fn merge(mut head: Value, report: Value) -> Value {
    if let (Some(h), Value::Object(r)) = (head.as_object_mut(), report) {
        for (k, v) in r {
            h.insert(k, v);
        }
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds_must_fit_in_duration() {
        let cli = Cli::parse_from([
            "x",
            "--duration",
            "2",
            "tcp-stream",
            "--connect",
            "192.0.2.1:1",
            "--seconds",
            "2",
        ]);
        assert!(validate(&cli).is_err());
        let cli = Cli::parse_from([
            "x",
            "udp-flood",
            "--connect",
            "192.0.2.1:1",
            "--seconds",
            "1",
            "--duration",
            "3",
        ]);
        assert_eq!(validate(&cli).unwrap(), Duration::from_secs(3));
    }
}
