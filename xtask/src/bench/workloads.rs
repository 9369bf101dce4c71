//! The workloads, all with `bpfnat-loadgen` (client in the client namespace, server in the
//! WAN namespace); the fixed-rate one also measures the machine's CPU time ([`super::cpu_time`]).

use std::{
    fs,
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::{
    cpu_time::CpuBusy,
    proc::{wait_file, Proc},
    topo::{Family, CLIENT_NS, WAN_NS},
    Ctx,
};

/// One number a workload produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Stream1,
    Stream4,
    RrTps,
    RrP50,
    RrP99,
    RrCrossTps,
    CrrCps,
    UdpPps,
    CpuNsPerPkt,
    Stream1V6,
    Stream4V6,
    RrTpsV6,
    RrP50V6,
    RrP99V6,
    CrrCpsV6,
    UdpPpsV6,
}

impl Metric {
    pub const ALL: [Metric; 16] = [
        Metric::Stream1,
        Metric::Stream4,
        Metric::RrTps,
        Metric::RrP50,
        Metric::RrP99,
        Metric::RrCrossTps,
        Metric::CrrCps,
        Metric::UdpPps,
        Metric::CpuNsPerPkt,
        Metric::Stream1V6,
        Metric::Stream4V6,
        Metric::RrTpsV6,
        Metric::RrP50V6,
        Metric::RrP99V6,
        Metric::CrrCpsV6,
        Metric::UdpPpsV6,
    ];

    pub fn family(self) -> Family {
        if self.ipv4_twin() == self {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The IPv4 metric an IPv6 one measures the same way (itself for an IPv4 metric).
    pub fn ipv4_twin(self) -> Metric {
        match self {
            Metric::Stream1V6 => Metric::Stream1,
            Metric::Stream4V6 => Metric::Stream4,
            Metric::RrTpsV6 => Metric::RrTps,
            Metric::RrP50V6 => Metric::RrP50,
            Metric::RrP99V6 => Metric::RrP99,
            Metric::CrrCpsV6 => Metric::CrrCps,
            Metric::UdpPpsV6 => Metric::UdpPps,
            m => m,
        }
    }

    /// This metric measured over `family` (every IPv4 metric but the cross-CPU RR and the CPU
    /// cost has an IPv6 twin).
    pub fn over(self, family: Family) -> Metric {
        match family {
            Family::V4 => self.ipv4_twin(),
            Family::V6 => Metric::ALL
                .into_iter()
                .find(|m| m.family() == Family::V6 && m.ipv4_twin() == self.ipv4_twin())
                .unwrap_or(self),
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Metric::Stream1V6 => "ipv6_tcp_stream_1flow_gbps",
            Metric::Stream4V6 => "ipv6_tcp_stream_4flows_gbps",
            Metric::RrTpsV6 => "ipv6_tcp_rr_per_sec",
            Metric::RrP50V6 => "ipv6_tcp_rr_p50_us",
            Metric::RrP99V6 => "ipv6_tcp_rr_p99_us",
            Metric::CrrCpsV6 => "ipv6_tcp_crr_per_sec",
            Metric::UdpPpsV6 => "ipv6_udp_pps_forwarded",
            Metric::Stream1 => "tcp_stream_1flow_gbps",
            Metric::Stream4 => "tcp_stream_4flows_gbps",
            Metric::RrTps => "tcp_rr_per_sec",
            Metric::RrP50 => "tcp_rr_p50_us",
            Metric::RrP99 => "tcp_rr_p99_us",
            Metric::RrCrossTps => "tcp_rr_cross_cpu_per_sec",
            Metric::CrrCps => "tcp_crr_per_sec",
            Metric::UdpPps => "udp_pps_forwarded",
            Metric::CpuNsPerPkt => "cpu_ns_per_packet",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Metric::Stream1V6 => "IPv6 TCP stream, 1 flow",
            Metric::Stream4V6 => "IPv6 TCP stream, 4 flows",
            Metric::RrTpsV6 => "IPv6 TCP_RR, 64 B, 1 connection",
            Metric::RrP50V6 => "IPv6 TCP_RR latency p50",
            Metric::RrP99V6 => "IPv6 TCP_RR latency p99",
            Metric::CrrCpsV6 => "IPv6 TCP_CRR, 16 in parallel",
            Metric::UdpPpsV6 => "IPv6 UDP 64 B, forwarded",
            Metric::Stream1 => "TCP stream, 1 flow",
            Metric::Stream4 => "TCP stream, 4 flows",
            Metric::RrTps => "TCP_RR, 64 B, 1 connection",
            Metric::RrP50 => "TCP_RR latency p50",
            Metric::RrP99 => "TCP_RR latency p99",
            Metric::RrCrossTps => "TCP_RR, client and server on separate CPUs",
            Metric::CrrCps => "TCP_CRR, 16 in parallel",
            Metric::UdpPps => "UDP 64 B, forwarded",
            Metric::CpuNsPerPkt => "CPU per packet at fixed rate",
        }
    }

    /// For the chart's axis.
    pub fn short(self) -> &'static str {
        match self {
            Metric::Stream1V6 => "v6 strm 1",
            Metric::Stream4V6 => "v6 strm 4",
            Metric::RrTpsV6 => "v6 RR/s",
            Metric::RrP50V6 => "v6 p50",
            Metric::RrP99V6 => "v6 p99",
            Metric::CrrCpsV6 => "v6 CRR/s",
            Metric::UdpPpsV6 => "v6 UDP",
            Metric::Stream1 => "stream 1",
            Metric::Stream4 => "stream 4",
            Metric::RrTps => "RR/s",
            Metric::RrP50 => "RR p50",
            Metric::RrP99 => "RR p99",
            Metric::RrCrossTps => "RR/s x-CPU",
            Metric::CrrCps => "CRR/s",
            Metric::UdpPps => "UDP pps",
            Metric::CpuNsPerPkt => "CPU/pkt",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::Stream1 | Metric::Stream4 => "Gbit/s",
            Metric::RrTps | Metric::RrCrossTps => "trans/s",
            Metric::RrP50 | Metric::RrP99 => "µs",
            Metric::CrrCps => "conn/s",
            Metric::UdpPps => "pkt/s",
            Metric::CpuNsPerPkt => "ns",
            // Measured and shown as their IPv4 twins.
            Metric::Stream1V6
            | Metric::Stream4V6
            | Metric::RrTpsV6
            | Metric::RrP50V6
            | Metric::RrP99V6
            | Metric::CrrCpsV6
            | Metric::UdpPpsV6 => self.ipv4_twin().unit(),
        }
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(
            self.ipv4_twin(),
            Metric::RrP50 | Metric::RrP99 | Metric::CpuNsPerPkt
        )
    }

    /// Which tool measured it.
    pub fn tool(self) -> &'static str {
        match self {
            Metric::Stream1 | Metric::Stream4 => {
                "bpfnat-loadgen tcp-stream (client: bytes acknowledged up to the server's FIN / time)"
            }
            Metric::RrTps | Metric::RrP50 | Metric::RrP99 => {
                "bpfnat-loadgen tcp-rr (client: transactions and latency histogram); client and \
                 server both on CPU 0"
            }
            Metric::RrCrossTps => {
                "bpfnat-loadgen tcp-rr (client: transactions); client on CPU 0, server on CPU 1, \
                 so every transaction waits for two cross-CPU wake-ups"
            }
            Metric::CrrCps => "bpfnat-loadgen tcp-crr (client: connect+request+response+close)",
            Metric::UdpPps => {
                "bpfnat-loadgen udp-sink (datagrams received + the WAN namespace's UDP RcvbufErrors, \
                 first to last packet); sender udp-flood, 1 thread, 4 flows"
            }
            Metric::CpuNsPerPkt => {
                "the machine's busy CPU time (all CPUs: load generators, softirq, interrupts, \
                 kernel threads; the clock is named below) over the udp-flood run at a fixed \
                 --rate, divided by the datagrams udp-sink received"
            }
            // Measured and shown as their IPv4 twins.
            Metric::Stream1V6
            | Metric::Stream4V6
            | Metric::RrTpsV6
            | Metric::RrP50V6
            | Metric::RrP99V6
            | Metric::CrrCpsV6
            | Metric::UdpPpsV6 => self.ipv4_twin().tool(),
        }
    }

    pub fn format(self, v: f64) -> String {
        match self {
            Metric::Stream1 | Metric::Stream4 => format!("{v:.2}"),
            Metric::RrP50 | Metric::RrP99 => format!("{v:.1}"),
            Metric::CpuNsPerPkt => format!("{v:.0}"),
            // Shown as their IPv4 twins.
            Metric::Stream1V6
            | Metric::Stream4V6
            | Metric::RrTpsV6
            | Metric::RrP50V6
            | Metric::RrP99V6
            | Metric::CrrCpsV6
            | Metric::UdpPpsV6 => self.ipv4_twin().format(v),
            _ => thousands(v),
        }
    }
}

/// 123456.7 -> "123,457"
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Stream1,
    Stream4,
    Rr,
    RrCross,
    Crr,
    UdpPps,
    Cpu,
    Stream1V6,
    Stream4V6,
    RrV6,
    CrrV6,
    UdpPpsV6,
}

impl Workload {
    /// In run order: IPv4, then IPv6.
    pub const ALL: [Workload; 12] = [
        Workload::Stream1,
        Workload::Stream4,
        Workload::Rr,
        Workload::RrCross,
        Workload::Crr,
        Workload::UdpPps,
        Workload::Cpu,
        Workload::Stream1V6,
        Workload::Stream4V6,
        Workload::RrV6,
        Workload::CrrV6,
        Workload::UdpPpsV6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Stream1 => "tcp-stream-1",
            Workload::Stream4 => "tcp-stream-4",
            Workload::Rr => "tcp-rr",
            Workload::RrCross => "tcp-rr-cross-cpu",
            Workload::Crr => "tcp-crr",
            Workload::UdpPps => "udp-pps",
            Workload::Cpu => "cpu-fixed-rate",
            Workload::Stream1V6 => "ipv6-tcp-stream-1",
            Workload::Stream4V6 => "ipv6-tcp-stream-4",
            Workload::RrV6 => "ipv6-tcp-rr",
            Workload::CrrV6 => "ipv6-tcp-crr",
            Workload::UdpPpsV6 => "ipv6-udp-pps",
        }
    }

    pub fn family(self) -> Family {
        if self.ipv4_twin() == self {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The IPv4 workload an IPv6 one runs the same way (itself for an IPv4 workload).
    fn ipv4_twin(self) -> Workload {
        match self {
            Workload::Stream1V6 => Workload::Stream1,
            Workload::Stream4V6 => Workload::Stream4,
            Workload::RrV6 => Workload::Rr,
            Workload::CrrV6 => Workload::Crr,
            Workload::UdpPpsV6 => Workload::UdpPps,
            w => w,
        }
    }

    pub fn metrics(self) -> Vec<Metric> {
        let family = self.family();
        let v4: &[Metric] = match self.ipv4_twin() {
            Workload::Stream1 => &[Metric::Stream1],
            Workload::Stream4 => &[Metric::Stream4],
            Workload::Rr => &[Metric::RrTps, Metric::RrP50, Metric::RrP99],
            Workload::RrCross => &[Metric::RrCrossTps],
            Workload::Crr => &[Metric::CrrCps],
            Workload::UdpPps => &[Metric::UdpPps],
            _ => &[Metric::CpuNsPerPkt],
        };
        v4.iter().map(|m| m.over(family)).collect()
    }

    /// Where its two load generators run.
    fn placement(self) -> Placement {
        match self.ipv4_twin() {
            Workload::Rr => Placement::SharedCpu,
            _ => Placement::SplitCpus,
        }
    }
}

/// Where the client and the server run (ignored with `--no-pin` or on one core).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Client on CPU 0, server on CPU 1. The forwarding work of each direction then lands on
    /// its sender's core, and where the scheduler happens to put the processes stops adding to
    /// the spread between repetitions.
    SplitCpus,
    /// Both on CPU 0. For one request/response connection: a transaction then costs two
    /// context switches on one core instead of two cross-CPU wake-ups. On a nested VM such a
    /// wake-up (an inter-processor interrupt through the hypervisor) takes about 60 µs and
    /// varies threefold between runs, which buries the network path's few microseconds.
    SharedCpu,
}

/// What one run of a workload produced.
pub struct Measured {
    pub values: Vec<(Metric, f64)>,
    /// Metrics measured but below the resolution of their source: no figure, and why.
    pub unresolved: Vec<(Metric, String)>,
    /// The loadgen reports and derived figures, for the JSON.
    pub raw: Value,
    /// Caveats worth a line in the report (e.g. the arm did not keep up).
    pub notes: Vec<String>,
}

/// `bpfnat-loadgen --netns NS --duration CAP MODE`, pinned to `cpu` when given (`taskset`).
pub fn loadgen(ctx: &Ctx, ns: &str, cap_secs: f64, mode: &str, cpu: Option<usize>) -> Command {
    let mut c = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(&ctx.loadgen);
            c
        }
        None => Command::new(&ctx.loadgen),
    };
    c.args(["--netns", ns, "--duration", &format!("{cap_secs:.1}"), mode]);
    c
}

struct PairOutcome {
    server: Value,
    client: Value,
    cpu: Option<CpuBusy>,
    wall: Duration,
}

/// Start a server in the WAN namespace, wait until it listens, run the client in the client
/// namespace, then collect both reports. Every process is capped by loadgen's --duration and
/// by our own deadline.
#[allow(
    clippy::too_many_arguments,
    reason = "one call per workload, each naming every choice; a struct would only rename them"
)]
fn pair(
    ctx: &Ctx,
    tag: &str,
    server_mode: &str,
    server_args: &[String],
    client_mode: &str,
    client_args: &[String],
    secs: f64,
    measure_cpu: bool,
    server_exits_by_itself: bool,
    strict: bool,
    placement: Placement,
) -> anyhow::Result<PairOutcome> {
    let ready = ctx.scratch.join(format!("{tag}.ready"));
    let _ = fs::remove_file(&ready);
    // The same placement in every arm.
    let (client_cpu, server_cpu) = match placement {
        _ if !ctx.pin || ctx.cores < 2 => (None, None),
        Placement::SplitCpus => (Some(0), Some(1)),
        Placement::SharedCpu => (Some(0), Some(0)),
    };
    let mut sc = loadgen(ctx, WAN_NS, secs + 30.0, server_mode, server_cpu);
    sc.args(server_args).arg("--ready-file").arg(&ready);
    let mut server = Proc::spawn(&format!("{tag}-server"), sc, &ctx.scratch)?;
    wait_file(&ready, Duration::from_secs(10), &mut server)?;

    let mut cc = loadgen(ctx, CLIENT_NS, secs + 15.0, client_mode, client_cpu);
    cc.args(client_args);
    let before = if measure_cpu {
        Some(ctx.cpu_clock.sample()?)
    } else {
        None
    };
    let t0 = Instant::now();
    let client = Proc::spawn(&format!("{tag}-client"), cc, &ctx.scratch)?
        .finish(Duration::from_secs_f64(secs + 20.0))?;
    let wall = t0.elapsed();
    let cpu = match before {
        Some(b) => Some(ctx.cpu_clock.between(&b, &ctx.cpu_clock.sample()?)?),
        None => None,
    };
    let server = server.finish(if server_exits_by_itself {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    })?;
    let client_json = client.json(&format!("{tag} client"))?;
    let server_json = server.json(&format!("{tag} server"))?;
    // Not strict: the fixed-rate flood reports a rate it could not reach as a failure; the
    // report still counts what was sent, and the caller notes it.
    if client_json["ok"] != json!(true) && (strict || client_json.get("error").is_some()) {
        bail!(
            "{tag}: {client_mode} failed: {}",
            client_json
                .get("failure")
                .or_else(|| client_json.get("error"))
                .unwrap_or(&client_json)
        );
    }
    Ok(PairOutcome {
        server: server_json,
        client: client_json,
        cpu,
        wall,
    })
}

fn num(v: &Value, key: &str) -> anyhow::Result<f64> {
    v.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("no number {key:?} in {v}"))
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

pub fn run(ctx: &Ctx, w: Workload) -> anyhow::Result<Measured> {
    let secs = ctx.seconds;
    let secs_arg = format!("{secs}");
    let family = w.family();
    let server_at = |port| family.server_at(port);
    match w.ipv4_twin() {
        Workload::Stream1 | Workload::Stream4 => {
            let flows = if w.ipv4_twin() == Workload::Stream1 {
                1
            } else {
                4
            };
            let port = 7201;
            let out = pair(
                ctx,
                w.name(),
                "tcp-stream-server",
                &[s("--listen"), server_at(port), s("--expect"), s(flows)],
                "tcp-stream",
                &[
                    s("--connect"),
                    server_at(port),
                    s("--flows"),
                    s(flows),
                    s("--seconds"),
                    secs_arg,
                ],
                secs,
                false,
                true,
                true,
                w.placement(),
            )?;
            let gbps = num(&out.client, "gbit_per_sec")?;
            let metric = if flows == 1 {
                Metric::Stream1
            } else {
                Metric::Stream4
            }
            .over(family);
            let mut notes = Vec::new();
            if out.server.get("bytes") != out.client.get("bytes") {
                notes.push(format!(
                    "{}: server counted {} bytes, client {}",
                    w.name(),
                    out.server["bytes"],
                    out.client["bytes"]
                ));
            }
            Ok(Measured {
                unresolved: vec![],
                values: vec![(metric, gbps)],
                raw: json!({"client": out.client, "server": out.server}),
                notes,
            })
        }
        Workload::Rr | Workload::RrCross => {
            let port = 7202;
            let out = pair(
                ctx,
                w.name(),
                "tcp-rr-server",
                &[s("--listen"), server_at(port), s("--expect"), s(1)],
                "tcp-rr",
                &[
                    s("--connect"),
                    server_at(port),
                    s("--size"),
                    s(64),
                    s("--conns"),
                    s(1),
                    s("--seconds"),
                    secs_arg,
                ],
                secs,
                false,
                true,
                true,
                w.placement(),
            )?;
            let values = if w.ipv4_twin() == Workload::Rr {
                vec![
                    (Metric::RrTps.over(family), num(&out.client, "per_sec")?),
                    (Metric::RrP50.over(family), num(&out.client, "p50_us")?),
                    (Metric::RrP99.over(family), num(&out.client, "p99_us")?),
                ]
            } else {
                vec![(Metric::RrCrossTps, num(&out.client, "per_sec")?)]
            };
            Ok(Measured {
                unresolved: vec![],
                values,
                raw: json!({"client": out.client, "server": out.server}),
                notes: vec![],
            })
        }
        Workload::Crr => {
            let port = 7203;
            let out = pair(
                ctx,
                w.name(),
                "tcp-rr-server",
                &[s("--listen"), server_at(port)],
                "tcp-crr",
                &[
                    s("--connect"),
                    server_at(port),
                    s("--size"),
                    s(64),
                    s("--parallel"),
                    s(16),
                    s("--seconds"),
                    secs_arg,
                ],
                secs,
                false,
                false,
                true,
                w.placement(),
            )?;
            Ok(Measured {
                unresolved: vec![],
                values: vec![(Metric::CrrCps.over(family), num(&out.client, "per_sec")?)],
                raw: json!({"client": out.client, "server": out.server}),
                notes: vec![],
            })
        }
        Workload::UdpPps => udp(ctx, w, 7301, None),
        Workload::Cpu => udp(ctx, w, 7302, Some(ctx.cpu_rate)),
        // The IPv6 workloads are matched as their IPv4 twins above.
        Workload::Stream1V6
        | Workload::Stream4V6
        | Workload::RrV6
        | Workload::CrrV6
        | Workload::UdpPpsV6 => bail!("{} has no IPv4 twin", w.name()),
    }
}

/// A UDP flood (as fast as possible, or at a fixed rate with the CPU time measured) into a
/// sink.
fn udp(ctx: &Ctx, w: Workload, port: u16, rate: Option<u64>) -> anyhow::Result<Measured> {
    let secs = ctx.seconds;
    let server_at = |port| w.family().server_at(port);
    // Idle machine CPU just before, to tell background load (other work on the machine)
    // apart from ours; reported, not subtracted.
    let background = if rate.is_some() && !ctx.quick {
        let a = ctx.cpu_clock.sample()?;
        super::proc::sleep(Duration::from_secs(1))?;
        let w = ctx.cpu_clock.between(&a, &ctx.cpu_clock.sample()?)?;
        Some(w.busy_ns / w.total_ns.max(1.0))
    } else {
        None
    };
    let mut flood = vec![
        s("--connect"),
        server_at(port),
        s("--size"),
        s(64),
        s("--flows"),
        s(4),
        s("--threads"),
        s(1),
        s("--seconds"),
        format!("{secs}"),
    ];
    if let Some(r) = rate {
        flood.extend([s("--rate"), s(r)]);
    }
    let out = pair(
        ctx,
        w.name(),
        "udp-sink",
        &[
            s("--listen"),
            server_at(port),
            s("--rcvbuf"),
            s(32 << 20),
            s("--idle-exit"),
            s(0.5),
        ],
        "udp-flood",
        &flood,
        secs,
        rate.is_some(),
        true,
        rate.is_none(),
        w.placement(),
    )?;
    let sent = num(&out.client, "packets")?;
    let received = num(&out.server, "packets")?;
    let rcvbuf_drops = num(&out.server, "kernel_rcvbuf_errors").unwrap_or(0.0);
    let sink_secs = num(&out.server, "seconds")?;
    let mut notes = Vec::new();
    if received <= 0.0 {
        bail!("{}: the sink received nothing ({sent} sent)", w.name());
    }
    let mut raw = json!({
        "flood": out.client,
        "sink": out.server,
        "delivered_fraction": received / sent.max(1.0),
    });
    match rate {
        None => {
            let forwarded = received + rcvbuf_drops;
            if rcvbuf_drops > 0.01 * received {
                notes.push(format!(
                    "udp-pps: {rcvbuf_drops} datagrams dropped at the sink's socket (sink-limited)"
                ));
            }
            Ok(Measured {
                unresolved: vec![],
                values: vec![(
                    Metric::UdpPps.over(w.family()),
                    forwarded / sink_secs.max(1e-3),
                )],
                raw,
                notes,
            })
        }
        Some(r) => {
            let cpu = out.cpu.context("cpu time")?;
            let wall_ns = out.wall.as_nanos() as f64;
            raw["cpu_source"] = json!(ctx.cpu_clock.describe());
            raw["cpu_resolution_ns"] = json!(cpu.resolution_ns);
            raw["cpu_busy_ns"] = json!(cpu.busy_ns);
            raw["wall_ns"] = json!(wall_ns);
            raw["cpu_cores_busy"] = json!(cpu.busy_ns / wall_ns.max(1.0));
            raw["background_busy_fraction_before"] = json!(background);
            if let Some(bg) = background {
                // What the rest of the machine was doing (the other CPUs' share is
                // included: the clock is machine-wide), assumed to go on during the run.
                raw["cpu_ns_per_packet_net_of_background"] =
                    json!(((cpu.busy_ns - bg * cpu.total_ns) / received).max(0.0));
            }
            raw["offered_pps"] = json!(r);
            if out.client["rate_achieved"] != json!(true) || received < 0.98 * sent {
                notes.push(format!(
                    "cpu: did not keep up with {r} pps: the sender reached {:.0} pps, the sink \
                     received {received} of {sent} (a busy machine, or a path too slow for \
                     this --cpu-rate)",
                    num(&out.client, "pps").unwrap_or(0.0)
                ));
            }
            Ok(cpu_per_packet(
                cpu,
                received,
                raw,
                notes,
                &ctx.cpu_clock.describe(),
            ))
        }
    }
}

/// The CPU-per-packet figure of a fixed-rate run, or, when the busy time is below what the
/// clock can resolve, no figure and the reason (a run that short on a fast machine is not a
/// failure, and a figure made of zero or one tick would be made up).
pub fn cpu_per_packet(
    cpu: CpuBusy,
    received: f64,
    raw: Value,
    notes: Vec<String>,
    source: &str,
) -> Measured {
    if cpu.resolved() {
        return Measured {
            values: vec![(Metric::CpuNsPerPkt, cpu.busy_ns / received)],
            unresolved: vec![],
            raw,
            notes,
        };
    }
    let why = format!(
        "{:.3} ms of CPU over {received} packets is below the resolution of {source}: \
         a figure needs at least {:.0} steps of {:.3} ms (a longer --seconds or a higher \
         --cpu-rate gives one)",
        cpu.busy_ns / 1e6,
        super::cpu_time::MIN_RESOLUTION_STEPS,
        cpu.resolution_ns / 1e6,
    );
    Measured {
        values: vec![],
        unresolved: vec![(Metric::CpuNsPerPkt, why)],
        raw,
        notes,
    }
}

/// A short TCP connection and a UDP echo through the host: the server must see `expect` as
/// the peer, and the UDP echoes must come back (the WAN side has no route to the client
/// subnet, so they only do if the host translates them back, or in the routed arm). Over
/// `family`; `expect` is of that family.
pub fn translation_check(ctx: &Ctx, family: Family, expect: IpAddr) -> anyhow::Result<Value> {
    let server_at = |port| family.server_at(port);
    let tag = match family {
        Family::V4 => "check",
        Family::V6 => "check6",
    };
    let tcp = pair(
        ctx,
        &format!("{tag}-tcp"),
        "tcp-hold-server",
        &[s("--listen"), server_at(7100), s("--expect"), s(1)],
        "tcp-hold-clients",
        &[
            s("--connect"),
            server_at(7100),
            s("--count"),
            s(1),
            s("--connect-timeout"),
            s(3),
            s("--close-timeout"),
            s(1),
        ],
        3.0,
        false,
        true,
        true,
        Placement::SplitCpus,
    )
    .context("TCP connection from the client to the server through the host")?;
    let peers: Vec<String> = tcp.server["peer_ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if peers != [expect.to_string()] {
        bail!("the server saw the TCP connection come from {peers:?}, expected {expect}");
    }
    let udp = pair(
        ctx,
        &format!("{tag}-udp"),
        "udp-sink",
        &[
            s("--listen"),
            server_at(7101),
            s("--reply"),
            s("--idle-exit"),
            s(0.5),
        ],
        "udp-flood",
        &[
            s("--connect"),
            server_at(7101),
            s("--packets"),
            s(20),
            s("--rate"),
            s(200),
            s("--seconds"),
            s(2),
            s("--replies"),
        ],
        2.0,
        false,
        true,
        true,
        Placement::SplitCpus,
    )
    .context("UDP echo from the client to the server through the host")?;
    let replies = udp.client["replies"].as_u64().unwrap_or(0);
    if replies == 0 {
        bail!("UDP: no echo came back from {}", family.server());
    }
    Ok(json!({
        "tcp_peer_seen_by_server": peers[0],
        "udp_sent": udp.client["packets"],
        "udp_echoes_back": replies,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every IPv6 workload produces IPv6 metrics whose IPv4 twins are what its IPv4 twin
    /// produces, and every metric a workload produces is listed (so the report shows it).
    #[test]
    fn ipv6_workloads_mirror_their_ipv4_twins() {
        for w in Workload::ALL {
            let twin = w.ipv4_twin();
            let mine = w.metrics();
            assert!(mine.iter().all(|m| m.family() == w.family()), "{w:?}");
            assert!(mine.iter().all(|m| Metric::ALL.contains(m)), "{w:?}");
            let as_v4: Vec<Metric> = mine.iter().map(|m| m.ipv4_twin()).collect();
            assert_eq!(as_v4, twin.metrics(), "{w:?}");
            assert_eq!(w.placement(), twin.placement(), "{w:?}");
        }
        let ids: std::collections::BTreeSet<&str> = Metric::ALL.iter().map(|m| m.id()).collect();
        assert_eq!(ids.len(), Metric::ALL.len(), "metric ids are unique");
        assert_eq!(Metric::UdpPps.over(Family::V6), Metric::UdpPpsV6);
        assert_eq!(Metric::UdpPpsV6.over(Family::V4), Metric::UdpPps);
        // No IPv6 twin: the cross-CPU RR and the CPU cost are measured over IPv4 only.
        assert_eq!(Metric::CpuNsPerPkt.over(Family::V6), Metric::CpuNsPerPkt);
    }
}
