//! Statistics over the repetitions, and the three outputs: JSON (everything), markdown (the
//! tables) and an SVG chart of the ratios, written by hand.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{json, Value};

use super::{
    arms::Arm,
    scale,
    topo::Family,
    values_of,
    workloads::{thousands, Metric, Workload},
    ArmRecord, ArmStatus, Sample,
};

#[derive(Clone, Debug)]
pub struct Stat {
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            samples: values.to_vec(),
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max, "samples": self.samples})
    }
}

pub struct Summary {
    /// Arms in run order with their status.
    pub arms: Vec<(Arm, ArmStatus)>,
    pub stats: BTreeMap<(Metric, usize), Stat>,
    /// CPU ns per packet minus routed's in the same repetition.
    pub cpu_overhead: BTreeMap<usize, Stat>,
}

fn arm_index(arm: Arm) -> usize {
    Arm::ALL.iter().position(|a| *a == arm).unwrap_or(0)
}

impl Summary {
    pub fn stat(&self, metric: Metric, arm: Arm) -> Option<&Stat> {
        self.stats.get(&(metric, arm_index(arm)))
    }

    /// arm's median ÷ base's median.
    pub fn ratio(&self, metric: Metric, arm: Arm, base: Arm) -> Option<f64> {
        let (a, b) = (self.stat(metric, arm)?, self.stat(metric, base)?);
        (b.median != 0.0).then(|| a.median / b.median)
    }

    /// The ratio turned so that > 1 is better (for latency and CPU: base ÷ arm).
    pub fn relative(&self, metric: Metric, arm: Arm, base: Arm) -> Option<f64> {
        let r = self.ratio(metric, arm, base)?;
        if metric.higher_is_better() {
            Some(r)
        } else {
            (r != 0.0).then(|| 1.0 / r)
        }
    }

    fn measured(&self) -> Vec<Arm> {
        self.arms
            .iter()
            .filter(|(_, s)| !matches!(s, ArmStatus::Unsupported(_)))
            .map(|(a, _)| *a)
            .collect()
    }
}

pub fn summarize(records: &[ArmRecord], samples: &[Sample]) -> Summary {
    let mut stats = BTreeMap::new();
    for rec in records {
        for metric in Metric::ALL {
            let vals: Vec<f64> = values_of(samples, rec.arm, metric).into_values().collect();
            if let Some(s) = Stat::of(&vals) {
                stats.insert((metric, arm_index(rec.arm)), s);
            }
        }
    }
    let routed = values_of(samples, Arm::Routed, Metric::CpuNsPerPkt);
    let mut cpu_overhead = BTreeMap::new();
    for rec in records {
        let own = values_of(samples, rec.arm, Metric::CpuNsPerPkt);
        let diffs: Vec<f64> = own
            .iter()
            .filter_map(|(rep, v)| routed.get(rep).map(|r| v - r))
            .collect();
        if let Some(s) = Stat::of(&diffs) {
            cpu_overhead.insert(arm_index(rec.arm), s);
        }
    }
    Summary {
        arms: records.iter().map(|r| (r.arm, r.status.clone())).collect(),
        stats,
        cpu_overhead,
    }
}

fn status_json(s: &ArmStatus) -> (&'static str, Option<&str>) {
    match s {
        ArmStatus::Ok => ("ok", None),
        ArmStatus::Unsupported(r) => ("unsupported", Some(r)),
        ArmStatus::Aborted(r) => ("aborted", Some(r)),
    }
}

pub struct Meta {
    pub machine: Value,
    pub date: String,
    pub reps: usize,
    pub seconds: f64,
    pub cpu_rate: u64,
    pub quick: bool,
    pub topology: String,
    pub bridge_nf_call_iptables: String,
    pub elapsed_s: f64,
    pub memory_default: Option<Value>,
    pub scale: Option<Value>,
    /// The load generators ran pinned (client CPU 0, server CPU 1; tcp-rr both on CPU 0).
    pub pinned: bool,
    /// `bpfnat profile --json`: each program's cost per path, tracing off and on.
    pub profile: Option<Value>,
    /// Where the 4-flow stream's CPU goes, per arm (`perf` sampling).
    pub stream_cpu: Option<Value>,
    /// The clock behind the CPU-per-packet figure, and what it counts.
    pub cpu_time_source: String,
}

pub fn to_json(meta: &Meta, records: &[ArmRecord], samples: &[Sample], sum: &Summary) -> Value {
    let arms: Vec<Value> = records
        .iter()
        .map(|r| {
            let (status, reason) = status_json(&r.status);
            json!({
                "name": r.arm.name(),
                "description": r.arm.description(),
                "status": status,
                "reason": reason,
                "expected_peer": r.arm.expected_peer(Family::V4).to_string(),
                "expected_peer_ipv6": r.arm.expected_peer(Family::V6).to_string(),
                "reps": r.reps,
            })
        })
        .collect();
    let workloads: Vec<Value> = Metric::ALL
        .iter()
        .map(|&m| {
            let per_arm: serde_json::Map<String, Value> = records
                .iter()
                .map(|r| {
                    let v = sum.stat(m, r.arm).map(|s| {
                        let mut v = s.json();
                        v["ratio_to_iptables"] = json!(sum.ratio(m, r.arm, Arm::Iptables));
                        v["ratio_to_routed"] = json!(sum.ratio(m, r.arm, Arm::Routed));
                        v["relative_to_iptables"] = json!(sum.relative(m, r.arm, Arm::Iptables));
                        v["relative_to_routed"] = json!(sum.relative(m, r.arm, Arm::Routed));
                        v
                    });
                    (r.arm.name().to_owned(), v.unwrap_or(Value::Null))
                })
                .collect();
            json!({
                "id": m.id(),
                "title": m.title(),
                "unit": m.unit(),
                "higher_is_better": m.higher_is_better(),
                "measured_by": m.tool(),
                "arms": per_arm,
            })
        })
        .collect();
    let overhead: serde_json::Map<String, Value> = records
        .iter()
        .filter_map(|r| {
            sum.cpu_overhead
                .get(&arm_index(r.arm))
                .map(|s| (r.arm.name().to_owned(), s.json()))
        })
        .collect();
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    let raw: Vec<Value> = samples
        .iter()
        .map(|s| match &s.result {
            Ok(m) => {
                for n in &m.notes {
                    notes.push(format!("rep {} {}: {n}", s.rep + 1, s.arm.name()));
                }
                for (metric, why) in &m.unresolved {
                    notes.push(format!(
                        "rep {} {}: no {} figure: {why}",
                        s.rep + 1,
                        s.arm.name(),
                        metric.id()
                    ));
                }
                json!({"rep": s.rep + 1, "arm": s.arm.name(), "workload": s.workload.name(),
                       "values": m.values.iter().map(|(k, v)| (k.id().to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
                       "raw": m.raw})
            }
            Err(e) => {
                failures.push(format!(
                    "rep {} {} {}: {e}",
                    s.rep + 1,
                    s.arm.name(),
                    s.workload.name()
                ));
                json!({"rep": s.rep + 1, "arm": s.arm.name(), "workload": s.workload.name(), "error": e})
            }
        })
        .collect();
    let background: Vec<f64> = raw
        .iter()
        .filter_map(|r| r["raw"]["background_busy_fraction_before"].as_f64())
        .collect();
    let cores = meta.machine["cores"].as_f64().unwrap_or(1.0);
    let background_cores = Stat::of(&background).map(|s| s.median * cores);
    json!({
        "machine": meta.machine,
        "machine_background_cores_median": background_cores,
        "settings": {
            "date": meta.date,
            "quick": meta.quick,
            "reps": meta.reps,
            "seconds_per_workload": meta.seconds,
            "cpu_rate_pps": meta.cpu_rate,
            "cpu_time_source": meta.cpu_time_source,
            "load_generators": if meta.pinned {
                "pinned: client on CPU 0, server on CPU 1; for tcp-rr both on CPU 0"
            } else {
                "placed by the scheduler (--no-pin)"
            },
            "order": "interleaved: every repetition runs every arm once, in the order of `arms`",
            "workloads": Workload::ALL.map(Workload::name),
            "udp": "64-byte UDP payload (106-byte frames), 4 flows (source ports) from 1 sender thread",
            "tcp_crr_parallel": 16,
            "tcp_rr": "1 connection, 64-byte request and response",
            "elapsed_seconds": meta.elapsed_s.round(),
        },
        "topology": meta.topology,
        "host_bridge_nf_call_iptables": meta.bridge_nf_call_iptables,
        "arms": arms,
        "workloads": workloads,
        "cpu_overhead_vs_routed_ns_per_packet": overhead,
        "bpfnat_map_memory_default_table": meta.memory_default,
        "scale": meta.scale,
        "profile": meta.profile,
        "stream_cpu": meta.stream_cpu,
        "notes": notes,
        "failures": failures,
        "raw": raw,
    })
}

fn cell(sum: &Summary, m: Metric, arm: Arm, status: &ArmStatus, reps: usize) -> String {
    match status {
        ArmStatus::Unsupported(_) => return "unsupported".to_owned(),
        ArmStatus::Aborted(_) if sum.stat(m, arm).is_none() => return "aborted".to_owned(),
        _ => {}
    }
    match sum.stat(m, arm) {
        None => "failed".to_owned(),
        Some(s) if reps > 1 && s.samples.len() > 1 => format!(
            "{} [{}–{}]",
            m.format(s.median),
            m.format(s.min),
            m.format(s.max)
        ),
        Some(s) => m.format(s.median),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

pub fn markdown(results: &Value, sum: &Summary) -> String {
    let mut md = String::new();
    let mach = &results["machine"];
    let set = &results["settings"];
    let reps = set["reps"].as_u64().unwrap_or(1) as usize;
    let quick = set["quick"].as_bool().unwrap_or(false);
    let _ = writeln!(
        md,
        "# NAT datapath benchmark: {} (kernel {})\n",
        mach["date"].as_str().unwrap_or("?"),
        mach["kernel"].as_str().unwrap_or("?")
    );
    if quick {
        let _ = writeln!(
            md,
            "**`--quick` smoke run: 1 repetition of 1-2 s per workload. It checks that every arm \
             translates and every workload produces a number; the numbers mean nothing.**\n"
        );
    }
    if let Some(bg) = busy_background(results) {
        let _ = writeln!(
            md,
            "**The machine was not quiet: {bg:.2} cores were busy with other work (median, \
             measured for 1 s before each CPU run). Treat every number here as noisy.**\n"
        );
    }
    let _ = writeln!(
        md,
        "- machine: {}, {} cores, {} GiB; kernel {}; load average at start {}",
        mach["cpu_model"].as_str().unwrap_or("?"),
        mach["cores"],
        mach["memory_gib"],
        mach["kernel"].as_str().unwrap_or("?"),
        mach["loadavg_at_start"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "- tools: {}; {}; {}; bpfnat at commit {}{}",
        mach["iptables"].as_str().unwrap_or("?"),
        mach["nft"].as_str().unwrap_or("?"),
        mach["bpftool"].as_str().unwrap_or("?"),
        mach["git_commit"].as_str().unwrap_or("?"),
        if mach["git_dirty"].as_bool() == Some(true) {
            " with uncommitted changes"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "- run: {reps} repetition(s) of every arm, interleaved (each repetition runs every arm \
         once, in the order below), {} s per workload, {} s in all; load generators {}",
        set["seconds_per_workload"],
        set["elapsed_seconds"],
        set["load_generators"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        md,
        "- topology: {} (net.bridge.bridge-nf-call-iptables={} in the host namespace)\n",
        results["topology"].as_str().unwrap_or("?"),
        results["host_bridge_nf_call_iptables"]
            .as_str()
            .unwrap_or("?")
    );

    let _ = writeln!(md, "## Arms\n\n| arm | status | what |\n|---|---|---|");
    for a in results["arms"].as_array().into_iter().flatten() {
        let status = match (a["status"].as_str(), a["reason"].as_str()) {
            (Some(s), Some(r)) => format!("{s}: {r}"),
            (Some(s), None) => s.to_owned(),
            _ => "?".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            a["name"].as_str().unwrap_or("?"),
            status.replace('|', "/"),
            a["description"].as_str().unwrap_or("")
        );
    }

    let arms = &sum.arms;
    let header = |md: &mut String, first: &str| {
        let _ = write!(md, "| {first} |");
        for (a, _) in arms {
            let _ = write!(md, " {} |", a.name());
        }
        let _ = write!(md, "\n|---|");
        for _ in arms {
            let _ = write!(md, "---:|");
        }
        md.push('\n');
    };
    let _ = writeln!(
        md,
        "\n## Results\n\nMedian{} over {reps} repetition(s); ↑ higher is better, ↓ lower is better.\n",
        if reps > 1 { " [min–max]" } else { "" }
    );
    header(&mut md, "workload");
    for m in Metric::ALL {
        let _ = write!(
            md,
            "| {} ({}, {}) |",
            m.title(),
            m.unit(),
            if m.higher_is_better() { "↑" } else { "↓" }
        );
        for (a, s) in arms {
            let _ = write!(md, " {} |", cell(sum, m, *a, s, reps));
        }
        md.push('\n');
    }
    let _ = write!(
        md,
        "| CPU per packet above routed (ns, ↓, paired per repetition) |"
    );
    for (a, _) in arms {
        let v = sum
            .cpu_overhead
            .get(&arm_index(*a))
            .map_or("–".to_owned(), |s| format!("{:+.0}", s.median));
        let _ = write!(md, " {v} |");
    }
    md.push('\n');

    for (base, title) in [(Arm::Iptables, "iptables"), (Arm::Routed, "routed")] {
        if sum.arms.iter().all(|(a, _)| *a != base) {
            continue;
        }
        let _ = writeln!(
            md,
            "\n### Relative to {title}\n\nArm ÷ {title} (medians); for latency and CPU per \
             packet {title} ÷ arm, so that above 1.00 is always better than {title}.\n"
        );
        header(&mut md, "workload");
        for m in Metric::ALL {
            let _ = write!(md, "| {} |", m.title());
            for (a, s) in arms {
                let v = match s {
                    ArmStatus::Unsupported(_) => "–".to_owned(),
                    _ => sum
                        .relative(m, *a, base)
                        .map_or("–".to_owned(), |r| format!("{r:.2}")),
                };
                let _ = write!(md, " {v} |");
            }
            md.push('\n');
        }
    }
    let _ = writeln!(md, "\n![ratios](CHART.svg)\n");
    targets_markdown(
        &mut md,
        sum,
        results.get("scale"),
        results.get("stream_cpu"),
    );

    if let Some(stream_cpu) = results.get("stream_cpu").filter(|v| !v.is_null()) {
        super::cpu_profile::markdown(&mut md, stream_cpu);
    }
    if let Some(profile) = results.get("profile").and_then(Value::as_array) {
        profile_markdown(&mut md, profile);
    }
    if let Some(scale) = results.get("scale").filter(|s| !s.is_null()) {
        scale_markdown(&mut md, scale);
    }
    if let Some(mem) = results
        .get("bpfnat_map_memory_default_table")
        .filter(|m| !m.is_null())
    {
        let _ = writeln!(
            md,
            "bpfnat's maps with the default table size: {} in all ({}).\n",
            mib(mem["total_bytes_memlock"].as_u64().unwrap_or(0)),
            maps_line(mem)
        );
    }

    let _ = writeln!(md, "## How each number was measured\n");
    for m in Metric::ALL.into_iter().filter(|m| m.family() == Family::V4) {
        let _ = writeln!(md, "- {}: {}", m.title(), m.tool());
    }
    let _ = writeln!(
        md,
        "- The IPv6 rows: the same workloads with the same tools and placement, to the \
         server's IPv6 address (IPv6 headers are 20 bytes longer: the same payload makes \
         larger packets). In the iptables arm both iptables and ip6tables hold Docker's rules, \
         as on a host with an IPv6-enabled Docker network; over IPv6 its figures are \
         ip6tables'."
    );
    let _ = writeln!(
        md,
        "- CPU per packet: the offered rate is fixed ({} packets/s) so that every arm does the \
         same work; the figure includes the load generators' own (identical) cost, which the \
         \"above routed\" row removes. The machine's busy time comes from {}.\n- Translation check, before each arm's workloads: a TCP \
         connection (the server must see {} or {} for the NAT arms, the client address for \
         routed) and a UDP echo (comes back only if translated back, or routed), over both \
         families.\n- Scale section: \
         entries written with BPF_MAP_UPDATE_BATCH into the pinned NAT_OUT/NAT_IN and removed \
         with BPF_MAP_DELETE_BATCH, sizes in serpentine order (0, 100k, 1M, then 1M, 100k, 0, \
         ...); program run time \
         from `kernel.bpf_stats_enabled` + `bpftool prog show` (run_time_ns / run_cnt); map \
         memory from `bpftool map show` (bytes_memlock); daemon CPU from /proc/PID/stat.",
        set["cpu_rate_pps"],
        set["cpu_time_source"]
            .as_str()
            .unwrap_or("/proc/stat (runs before the field was recorded)"),
        super::topo::UPLINK_ADDR,
        super::topo::UPLINK_ADDR6
    );
    let background: Vec<f64> = results["raw"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["raw"]["background_busy_fraction_before"].as_f64())
        .collect();
    if let Some(bg) = Stat::of(&background) {
        let cores = mach["cores"].as_f64().unwrap_or(1.0);
        let _ = writeln!(
            md,
            "- Machine background, measured for 1 s with no traffic before each CPU run: median \
             {:.2} cores busy (max {:.2}). Anything well above zero means the machine was not \
             quiet and the CPU figures include other work (the JSON also has them net of that \
             background).",
            bg.median * cores,
            bg.max * cores
        );
    }
    let notes: Vec<&str> = results["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(results["failures"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes and failures\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

/// Background load worth a warning (a quarter of a core or more).
fn busy_background(results: &Value) -> Option<f64> {
    results["machine_background_cores_median"]
        .as_f64()
        .filter(|bg| *bg >= 0.25)
}

fn maps_line(mem: &Value) -> String {
    mem["maps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["bytes_memlock"].as_u64().unwrap_or(0) >= 1 << 20)
        .map(|m| {
            format!(
                "{} {} entries {}",
                m["name"].as_str().unwrap_or("?"),
                thousands(m["max_entries"].as_f64().unwrap_or(0.0)),
                mib(m["bytes_memlock"].as_u64().unwrap_or(0))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The change of `m` with `n` entries against the empty table, paired per repetition (each
/// repetition measures every size): median, min and max of full ÷ empty − 1.
fn paired_change(points: &[&Value], n: u64, m: Metric) -> Option<Stat> {
    let at = |rep: u64, entries: u64| {
        points
            .iter()
            .find(|p| p["rep"].as_u64() == Some(rep) && p["entries"].as_u64() == Some(entries))
            .and_then(|p| p[m.id()].as_f64())
    };
    let changes: Vec<f64> = points
        .iter()
        .filter(|p| p["entries"].as_u64() == Some(0))
        .filter_map(|p| {
            let rep = p["rep"].as_u64()?;
            let (empty, full) = (at(rep, 0)?, at(rep, n)?);
            (empty > 0.0).then(|| full / empty - 1.0)
        })
        .collect();
    Stat::of(&changes)
}

/// Issue 5's targets, each with the figure that decides it: met or missed, and by how much.
fn targets_markdown(
    md: &mut String,
    sum: &Summary,
    scale: Option<&Value>,
    stream_cpu: Option<&Value>,
) {
    let has = |a: Arm| {
        sum.arms
            .iter()
            .any(|(x, s)| *x == a && matches!(s, ArmStatus::Ok))
    };
    if !has(Arm::Bpfnat) {
        return;
    }
    let _ = writeln!(
        md,
        "## Against the targets\n\nComputed from the medians above (ratios: bpfnat ÷ the other \
         arm, higher is better).\n\n| target | figure | verdict |\n|---|---:|---|"
    );
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let mut row = |what: String, figure: String, ok: Option<bool>| {
        let v = ok.map_or("not measured", verdict);
        let _ = writeln!(md, "| {what} | {figure} | {v} |");
    };
    for family in Family::ALL {
        // The iptables arm loads ip6tables' rules too: over IPv6 it is ip6tables.
        let iptables = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        for (base, title, need) in [
            (Arm::Routed, "routed", 1.0),
            (Arm::Iptables, iptables, 1.15),
        ] {
            if !has(base) {
                continue;
            }
            for m in [Metric::Stream1, Metric::Stream4, Metric::UdpPps] {
                let m = m.over(family);
                let r = sum.relative(m, Arm::Bpfnat, base);
                // Against iptables, the 4-flow stream has a measured ceiling: what a NAT
                // costing nothing could reach on this machine (see "Where the 4-flow stream's
                // CPU goes"; measured over IPv4).
                let ceiling = (m == Metric::Stream4 && base == Arm::Iptables)
                    .then(|| stream_cpu.and_then(super::cpu_profile::ceiling_vs_iptables))
                    .flatten()
                    .map_or(String::new(), |c| format!(" (ceiling here {c:.2}×)"));
                row(
                    format!("{} ≥ {need:.2}× {title}", m.title()),
                    r.map_or("–".into(), |r| format!("{r:.2}×{ceiling}")),
                    r.map(|r| r >= need),
                );
            }
        }
        if has(Arm::Iptables) {
            for m in [Metric::RrTps, Metric::CrrCps] {
                let m = m.over(family);
                let r = sum.relative(m, Arm::Bpfnat, Arm::Iptables);
                row(
                    format!("{} ≥ {iptables}", m.title()),
                    r.map_or("–".into(), |r| format!("{r:.2}×")),
                    r.map(|r| r >= 1.0),
                );
            }
        }
    }
    // Issue 15: IPv6's margin over ip6tables as large as IPv4's over iptables (within 0.05,
    // which is about the spread of a ratio of two medians on this machine).
    if has(Arm::Iptables) {
        for m in [
            Metric::Stream1,
            Metric::Stream4,
            Metric::RrTps,
            Metric::CrrCps,
            Metric::UdpPps,
        ] {
            let v4 = sum.relative(m, Arm::Bpfnat, Arm::Iptables);
            let v6 = sum.relative(m.over(Family::V6), Arm::Bpfnat, Arm::Iptables);
            row(
                format!(
                    "{}: margin over ip6tables (IPv6) ≥ margin over iptables (IPv4) − 0.05",
                    m.title()
                ),
                match (v6, v4) {
                    (Some(a), Some(b)) => format!("{a:.2}× vs {b:.2}×"),
                    _ => "–".into(),
                },
                v6.zip(v4).map(|(a, b)| a >= b - 0.05),
            );
        }
    }
    if has(Arm::Iptables) {
        let ours = sum
            .cpu_overhead
            .get(&arm_index(Arm::Bpfnat))
            .map(|s| s.median);
        let theirs = sum
            .cpu_overhead
            .get(&arm_index(Arm::Iptables))
            .map(|s| s.median);
        if let (Some(o), Some(t)) = (ours, theirs) {
            row(
                "CPU per packet above routed ≤ ½ of iptables'".into(),
                format!("{o:+.0} ns vs {t:+.0} ns ({:.2})", o / t),
                Some(t > 0.0 && o <= t / 2.0),
            );
        }
    }
    // Scale: 1M entries against the empty table, same daemon.
    let points: Vec<&Value> = scale
        .and_then(|s| s["points"].as_array())
        .into_iter()
        .flatten()
        .collect();
    for m in [Metric::UdpPps, Metric::RrTps] {
        if let Some(c) = paired_change(&points, 1_000_000, m) {
            row(
                format!(
                    "{} with 1,000,000 entries: at most 5 % below the empty table (paired per \
                     repetition)",
                    m.title()
                ),
                format!(
                    "{:+.1} % [{:+.1}–{:+.1}]",
                    c.median * 100.0,
                    c.min * 100.0,
                    c.max * 100.0
                ),
                Some(c.median >= -0.05),
            );
        }
    }
    md.push('\n');
}

/// The profile: per program and path, ns per run with tracing off and on (filtered out).
fn profile_markdown(md: &mut String, cases: &[Value]) {
    let _ = writeln!(
        md,
        "## Profile: where a packet's time in the datapath goes\n\n\
         `bpfnat profile`: each program run on crafted 64-byte frames (84 bytes for the IPv6 cases, `…6`: the same payload) with BPF_PROG_TEST_RUN in \
         a private copy of the topology (real FIB and neighbour lookups, one fresh frame per \
         run), the kernel timing each run; median [p10–p90] ns per run. The first row is the \
         floor (a device the program does not serve: one map lookup), mostly the kernel's \
         timing of a run. \"trace on\": `bpfnat trace` running with a filter this traffic does \
         not match; with tracing off the only trace work is one array read, part of every \
         \"off\" figure.\n"
    );
    let _ = writeln!(
        md,
        "| case | program | path | trace off | trace on (filtered out) | on − off |\n\
         |---|---|---|---:|---:|---:|"
    );
    let range = |c: &Value| format!("{} [{}–{}]", c["median_ns"], c["p10_ns"], c["p90_ns"]);
    for off in cases.iter().filter(|c| c["trace_on"] == Value::Bool(false)) {
        let on = cases
            .iter()
            .find(|c| c["trace_on"] == Value::Bool(true) && c["case"] == off["case"]);
        let delta = on
            .and_then(|on| Some(on["median_ns"].as_i64()? - off["median_ns"].as_i64()?))
            .map_or("–".to_owned(), |d| format!("{d:+}"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            off["case"].as_str().unwrap_or("?"),
            off["program"].as_str().unwrap_or("?"),
            off["path"].as_str().unwrap_or("?"),
            range(off),
            on.map_or("–".to_owned(), range),
            delta
        );
    }
    md.push('\n');
}

fn scale_markdown(md: &mut String, scale: &Value) {
    let _ = writeln!(md, "## Scale: bpfnat with full tables\n");
    if let Some(e) = scale["error"].as_str() {
        let _ = writeln!(md, "Failed: {e}\n");
        return;
    }
    let points: Vec<&Value> = scale["points"].as_array().into_iter().flatten().collect();
    // Programs seen, in order.
    let mut progs: Vec<String> = Vec::new();
    for p in &points {
        for w in ["tcp-rr", "udp-pps"] {
            for e in p[format!("programs_during_{w}")]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(n) = e["program"].as_str() {
                    if !progs.iter().any(|x| x == n) {
                        progs.push(n.to_owned());
                    }
                }
            }
        }
    }
    let _ = writeln!(
        md,
        "`bpfnat up --table-size {}`, synthetic ESTABLISHED TCP mappings that no packet \
         matches; medians over repetitions. Program time is ns per run (RR / UDP flood).\n",
        thousands(scale["table_size"].as_f64().unwrap_or(0.0))
    );
    let _ = write!(md, "| entries | RR/s | RR p99 µs | CRR/s | UDP pps |");
    for p in &progs {
        let _ = write!(md, " {p} ns |");
    }
    let _ = write!(md, " daemon CPU |\n|---:|---:|---:|---:|---:|");
    for _ in &progs {
        md.push_str("---:|");
    }
    md.push_str("---:|\n");
    for n in scale::POINTS {
        let at: Vec<&&Value> = points
            .iter()
            .filter(|p| p["entries"].as_u64() == Some(n))
            .collect();
        if at.is_empty() {
            continue;
        }
        let med = |f: &dyn Fn(&Value) -> Option<f64>| {
            Stat::of(&at.iter().filter_map(|p| f(p)).collect::<Vec<_>>()).map(|s| s.median)
        };
        let fmt = |m: Metric| {
            med(&|p: &Value| p[m.id()].as_f64()).map_or("–".to_owned(), |v| m.format(v))
        };
        let _ = write!(
            md,
            "| {} | {} | {} | {} | {} |",
            thousands(n as f64),
            fmt(Metric::RrTps),
            fmt(Metric::RrP99),
            fmt(Metric::CrrCps),
            fmt(Metric::UdpPps)
        );
        for prog in &progs {
            let per = |w: &str| {
                med(&|p: &Value| {
                    p[format!("programs_during_{w}")]
                        .as_array()?
                        .iter()
                        .find(|e| e["program"].as_str() == Some(prog))?["ns_per_run"]
                        .as_f64()
                })
                .map_or("–".to_owned(), |v| format!("{v:.0}"))
            };
            let _ = write!(md, " {} / {} |", per("tcp-rr"), per("udp-pps"));
        }
        let cpu = med(&|p: &Value| p["daemon_cpu_fraction"].as_f64())
            .map_or("–".to_owned(), |v| format!("{:.1} %", v * 100.0));
        let _ = writeln!(md, " {cpu} |");
    }
    // Each repetition measures every size: changes against the same repetition's empty table.
    let mut paired = Vec::new();
    for &n in scale::POINTS.iter().filter(|&&n| n > 0) {
        let parts: Vec<String> = [Metric::UdpPps, Metric::RrTps, Metric::CrrCps]
            .into_iter()
            .filter_map(|m| {
                let c = paired_change(&points, n, m)?;
                Some(format!(
                    "{} {:+.1} % [{:+.1}–{:+.1}]",
                    m.short(),
                    c.median * 100.0,
                    c.min * 100.0,
                    c.max * 100.0
                ))
            })
            .collect();
        if !parts.is_empty() {
            paired.push(format!("{}: {}", thousands(n as f64), parts.join(", ")));
        }
    }
    if !paired.is_empty() {
        let _ = writeln!(
            md,
            "\nAgainst the empty table of the same repetition (full ÷ empty − 1; median \
             [min–max] over repetitions): {}.\n",
            paired.join("; ")
        );
    }
    let mem = &scale["memory"];
    if !mem.is_null() {
        let _ = writeln!(
            md,
            "\nMap memory at this table size (bytes_memlock): {} in all ({}). Hash maps are \
             preallocated, so it does not depend on how full they are.\n",
            mib(mem["total_bytes_memlock"].as_u64().unwrap_or(0)),
            maps_line(mem)
        );
    }
    let fills: Vec<String> = points
        .iter()
        .filter(|p| p["rep"].as_u64() == Some(1))
        .filter_map(|p| {
            Some(format!(
                "{} in {:.1} s",
                thousands(p["entries"].as_f64()?),
                p["fill_seconds"].as_f64()?
            ))
        })
        .collect();
    if !fills.is_empty() {
        let _ = writeln!(
            md,
            "Writing the synthetic mappings (BPF_MAP_UPDATE_BATCH, first repetition, \
             cumulative targets): {}.",
            fills.join(", ")
        );
    }
    let walks: Vec<String> = scale::POINTS
        .iter()
        .filter_map(|&n| {
            let p = points.iter().find(|p| p["entries"].as_u64() == Some(n))?;
            Some(format!(
                "{} in {:.1} s",
                thousands(n as f64),
                p["stats_walk_seconds"].as_f64()?
            ))
        })
        .collect();
    if !walks.is_empty() {
        let _ = writeln!(
            md,
            "One `bpfnat stats` (a userspace walk of both tables, like the sweeper's): {}.",
            walks.join(", ")
        );
    }
    if let Some(stop) = scale["stop_seconds_full_table"].as_f64() {
        let _ = writeln!(
            md,
            "With the table full, `bpfnat` took {stop:.1} s to stop after SIGINT."
        );
    }
    let errors: Vec<&str> = points
        .iter()
        .flat_map(|p| p["errors"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    for e in errors {
        let _ = writeln!(md, "- failed: {e}");
    }
    md.push('\n');
}

fn color(arm: Arm) -> &'static str {
    match arm {
        Arm::Routed => "#9e9e9e",
        Arm::Iptables => "#e15759",
        Arm::Nftables => "#4e79a7",
        Arm::NftFlowtable => "#76b7b2",
        Arm::Bpfnat => "#59a14f",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Two panels of grouped bars: every arm relative to iptables, then to routed (> 1 = better).
pub fn svg(results: &Value, sum: &Summary) -> String {
    let arms = sum.measured();
    let metrics = Metric::ALL;
    // Room for every metric's group of bars, whatever their number.
    let (left, right) = (60.0_f64, 20.0_f64);
    let w = (left + right + 70.0 * metrics.len() as f64).max(1040.0);
    let (panel_h, plot_h, top) = (310.0_f64, 230.0_f64, 80.0_f64);
    let bases: Vec<Arm> = [Arm::Iptables, Arm::Routed]
        .into_iter()
        .filter(|b| arms.contains(b))
        .collect();
    let h = top + panel_h * bases.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Arial, sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mach = &results["machine"];
    let date = mach["date"].as_str().unwrap_or("?");
    let subtitle = format!(
        "median of {} repetition(s) · {} · kernel {} · {} × {}{}",
        results["settings"]["reps"],
        &date[..10.min(date.len())],
        mach["kernel"].as_str().unwrap_or("?"),
        mach["cores"],
        mach["cpu_model"].as_str().unwrap_or("?"),
        if results["settings"]["quick"].as_bool() == Some(true) {
            " · QUICK SMOKE RUN, numbers meaningless".to_owned()
        } else if let Some(bg) = busy_background(results) {
            format!(" · MACHINE BUSY ({bg:.1} cores of background load): noisy")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="16" font-weight="bold" text-anchor="middle">NAT datapaths: performance relative to a baseline (above 1 = better)</text>"#,
        w / 2.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="40" font-size="12" text-anchor="middle">{}</text>"#,
        w / 2.0,
        esc(&subtitle)
    );
    // Legend.
    let mut lx = left;
    for (a, st) in &sum.arms {
        let label = match st {
            ArmStatus::Unsupported(_) => format!("{} (unsupported)", a.name()),
            ArmStatus::Aborted(_) => format!("{} (aborted)", a.name()),
            ArmStatus::Ok => a.name().to_owned(),
        };
        let fill = if matches!(st, ArmStatus::Unsupported(_)) {
            "none"
        } else {
            color(*a)
        };
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="52" width="14" height="14" fill="{fill}" stroke="#555"/><text x="{}" y="64" font-size="12">{}</text>"##,
            lx + 18.0,
            esc(&label)
        );
        lx += 26.0 + 7.2 * label.len() as f64;
    }
    let group_w = (w - left - right) / metrics.len() as f64;
    let nbars = arms.len().max(1) as f64;
    let bar_w = ((group_w - 16.0) / nbars).min(26.0);
    for (pi, base) in bases.iter().enumerate() {
        let y0 = top + panel_h * pi as f64 + 30.0; // top of the plot area
        let vals: Vec<f64> = metrics
            .iter()
            .flat_map(|&m| arms.iter().filter_map(move |&a| sum.relative(m, a, *base)))
            .collect();
        let vmax = vals.iter().copied().fold(1.2_f64, f64::max).min(4.0);
        let ymax = (vmax * 4.0).ceil() / 4.0 + 0.25;
        let y = |v: f64| y0 + plot_h - (v.min(ymax) / ymax) * plot_h;
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{}" font-size="13" font-weight="bold">relative to {} (arm ÷ {}; latency and CPU/packet: {} ÷ arm)</text>"#,
            y0 - 10.0,
            base.name(),
            base.name(),
            base.name()
        );
        // Grid and axis.
        let mut t = 0.0;
        while t <= ymax + 1e-9 {
            let yy = y(t);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end">{t:.2}</text>"##,
                w - right,
                left - 5.0,
                yy + 3.5
            );
            t += if ymax > 2.5 { 0.5 } else { 0.25 };
        }
        let y1 = y(1.0);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y1:.1}" x2="{}" y2="{y1:.1}" stroke="#333" stroke-dasharray="5,3"/>"##,
            w - right
        );
        for (gi, &m) in metrics.iter().enumerate() {
            let gx = left + group_w * gi as f64 + (group_w - bar_w * nbars) / 2.0;
            for (ai, &a) in arms.iter().enumerate() {
                let x = gx + bar_w * ai as f64;
                match sum.relative(m, a, *base) {
                    Some(v) => {
                        let yy = y(v);
                        let _ = writeln!(
                            s,
                            r#"<rect x="{x:.1}" y="{yy:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {v:.3}</title></rect>"#,
                            bar_w - 2.0,
                            (y0 + plot_h - yy).max(0.0),
                            color(a),
                            a.name(),
                            esc(m.title())
                        );
                        let (lx, ly) = (x + bar_w / 2.0, yy - 4.0);
                        let _ = writeln!(
                            s,
                            r#"<text x="{lx:.1}" y="{ly:.1}" font-size="9" text-anchor="start" transform="rotate(-90 {lx:.1} {ly:.1})" dy="3">{v:.2}{}</text>"#,
                            if v > ymax { " ▲" } else { "" }
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            r##"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="#999">–</text>"##,
                            x + bar_w / 2.0,
                            y0 + plot_h - 3.0
                        );
                    }
                }
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                left + group_w * (gi as f64 + 0.5),
                y0 + plot_h + 16.0,
                esc(m.short())
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#333"/>"##,
            y0 + plot_h,
            w - right,
            y0 + plot_h
        );
    }
    s.push_str("</svg>\n");
    s
}
