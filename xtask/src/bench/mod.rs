//! `cargo xtask bench`: plain routing, iptables (Docker's rules), nftables, nftables with a
//! flowtable and bpfnat, on one topology, interleaved, repeated, with the numbers written to
//! `bench/results/` (see bench/README.md).
//!
//! - [`topo`]: the namespaces (built once per run, removed at the end whatever happens).
//! - [`arms`]: setting up, checking and removing each arm.
//! - [`workloads`]: the loadgen workloads.
//! - [`cpu_time`]: the machine's CPU time, from the finest clock it has.
//! - [`scale`]: bpfnat with 100k / 1M synthetic table entries.
//! - [`report`]: statistics, JSON, markdown and the SVG chart.

mod arms;
mod cpu_profile;
mod cpu_time;
mod proc;
mod report;
mod scale;
mod topo;
mod workloads;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use arms::Arm;
use workloads::{Metric, Workload};

use crate::{cmd, workspace_root};

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Smoke mode: 1 repetition, 1 s per workload, no scale section, results in a temporary
    /// directory; fails unless every arm translated and every workload produced a number.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of every arm, interleaved (A B C D E, A B C D E, ...) [default: 5; --quick: 1].
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,
    /// Seconds per workload [default: 5; --quick: 1].
    #[arg(long, value_name = "S")]
    pub seconds: Option<f64>,
    /// Offered UDP rate of the CPU-cost workload, packets/s; every arm must keep up with it
    /// [default: 25000; --quick: 10000].
    #[arg(long, value_name = "PPS")]
    pub cpu_rate: Option<u64>,
    /// Only these arms (comma-separated: routed, iptables, nftables, nftables-flowtable, bpfnat).
    #[arg(long, value_delimiter = ',', value_name = "ARMS")]
    pub arms: Vec<String>,
    /// Only these workloads (comma-separated: tcp-stream-1, tcp-stream-4, tcp-rr,
    /// tcp-rr-cross-cpu, tcp-crr, udp-pps, cpu-fixed-rate, and over IPv6 ipv6-tcp-stream-1,
    /// ipv6-tcp-stream-4, ipv6-tcp-rr, ipv6-tcp-crr, ipv6-udp-pps); for quick comparisons
    /// while developing.
    #[arg(long, value_delimiter = ',', value_name = "WORKLOADS")]
    pub workloads: Vec<String>,
    /// Let the scheduler place the load generators (by default the client runs on CPU 0 and
    /// the server on CPU 1, both on CPU 0 for tcp-rr; this narrows the spread between
    /// repetitions).
    #[arg(long)]
    pub no_pin: bool,
    /// Skip the table-scale section (100k and 1M entries in bpfnat's maps).
    #[arg(long)]
    pub no_scale: bool,
    /// Directory for the results [default: bench/results; --quick: a new temporary directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

impl BenchArgs {
    /// What `cargo xtask test` runs.
    pub fn quick() -> Self {
        Self {
            quick: true,
            reps: None,
            seconds: None,
            cpu_rate: None,
            arms: Vec::new(),
            workloads: Vec::new(),
            no_pin: false,
            no_scale: true,
            out: None,
        }
    }
}

/// What every part of the benchmark needs.
pub struct Ctx {
    pub bpfnat: PathBuf,
    pub loadgen: PathBuf,
    /// Ready files and logs of the child processes.
    pub scratch: PathBuf,
    pub seconds: f64,
    pub cpu_rate: u64,
    pub quick: bool,
    /// USER_HZ of /proc/stat (the daemon's CPU time in the scale section).
    pub ticks: f64,
    /// The machine's busy time for the fixed-rate workload.
    pub cpu_clock: cpu_time::CpuClock,
    pub cores: usize,
    /// Pin the load generators (client CPU 0, server CPU 1).
    pub pin: bool,
}

/// How an arm fared over the whole run.
#[derive(Clone, Debug)]
pub enum ArmStatus {
    Ok,
    /// The kernel cannot do it (reported, not a failure).
    Unsupported(String),
    /// Set-up or the translation check failed: measured no further.
    Aborted(String),
}

pub struct ArmRecord {
    pub arm: Arm,
    pub status: ArmStatus,
    /// Per repetition: the translation check's findings and anything else worth keeping.
    pub reps: Vec<Value>,
}

/// One workload run of one arm in one repetition.
pub struct Sample {
    pub rep: usize,
    pub arm: Arm,
    pub workload: Workload,
    pub result: Result<workloads::Measured, String>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // From here on Ctrl-C only sets a flag: every wait checks it and unwinds through the
    // guards (processes stopped, arm removed, namespaces deleted, sysctl restored).
    crate::stop_flag();
    let quick = args.quick;
    let reps = args.reps.unwrap_or(if quick { 1 } else { 5 });
    let seconds = args.seconds.unwrap_or(if quick { 1.0 } else { 5.0 });
    if reps == 0 || !(seconds.is_finite() && (0.2..=600.0).contains(&seconds)) {
        bail!("--reps must be at least 1 and --seconds between 0.2 and 600");
    }
    // 25k: half of what the slowest arm forwarded at most on the 2-core development VM.
    let cpu_rate = args.cpu_rate.unwrap_or(if quick { 10_000 } else { 25_000 });
    if cpu_rate == 0 {
        bail!("--cpu-rate must be positive");
    }
    let selected = choose(&args.arms, &Arm::ALL, Arm::name, "arm")?;
    let workloads = choose(&args.workloads, &Workload::ALL, Workload::name, "workload")?;

    let (bpfnat, loadgen) = build_binaries()?;
    let _lock = topo::RunLock::acquire()?;
    let started = Instant::now();
    let date = cmd(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?
        .trim()
        .to_owned();
    let out_dir = match &args.out {
        Some(d) => d.clone(),
        None if quick => std::env::temp_dir().join(format!(
            "bpfnat-bench-quick-{}-{}",
            date.replace(':', ""),
            std::process::id()
        )),
        None => workspace_root().join("bench/results"),
    };
    let scratch = std::env::temp_dir().join(format!("bpfnat-bench-scratch-{}", std::process::id()));
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let ctx = Ctx {
        bpfnat,
        loadgen,
        scratch: scratch.clone(),
        seconds,
        cpu_rate,
        quick,
        ticks: cpu_time::clock_ticks(),
        cpu_clock: cpu_time::CpuClock::detect(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        pin: !args.no_pin,
    };
    let result = measure_and_report(
        args, &ctx, quick, reps, seconds, cpu_rate, &selected, &workloads, &date, &out_dir, started,
    );
    match &result {
        Ok(()) => {
            let _ = fs::remove_dir_all(&scratch);
        }
        Err(_) => eprintln!(
            "bench: the child processes' output is in {}",
            scratch.display()
        ),
    }
    result
}

/// The items named in `names` (all of them when none is named), always in `all`'s order;
/// an unknown name is an error listing the valid ones.
fn choose<T: Copy + PartialEq>(
    names: &[String],
    all: &[T],
    name: fn(T) -> &'static str,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    for n in names {
        if !all.iter().any(|&x| name(x) == n) {
            let valid: Vec<&str> = all.iter().map(|&x| name(x)).collect();
            bail!("unknown {what} {n:?} ({what}s: {})", valid.join(", "));
        }
    }
    Ok(all
        .iter()
        .copied()
        .filter(|&x| names.is_empty() || names.iter().any(|n| name(x) == n))
        .collect())
}

#[allow(
    clippy::too_many_arguments,
    reason = "the run's settings, resolved once in run() and passed down"
)]
fn measure_and_report(
    args: &BenchArgs,
    ctx: &Ctx,
    quick: bool,
    reps: usize,
    seconds: f64,
    cpu_rate: u64,
    selected: &[Arm],
    workloads: &[Workload],
    date: &str,
    out_dir: &Path,
    started: Instant,
) -> anyhow::Result<()> {
    let machine = machine_info(date);
    println!(
        "== bench{}: {reps} repetition(s), {seconds} s per workload, arms {}; {} / {} cores / kernel {}",
        if quick { " --quick" } else { "" },
        selected.iter().map(|a| a.name()).collect::<Vec<_>>().join(" "),
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["kernel"].as_str().unwrap_or("?"),
    );

    let topology = topo::Topology::create()?;
    println!("topology: {}", topo::Topology::describe());
    arms::check_clean().context("the new topology")?;
    let bridge_nf = cmd(
        proc::in_ns(topo::HOST_NS, "sysctl").args(["-n", "net.bridge.bridge-nf-call-iptables"])
    )
    .map(|s| s.trim().to_owned())
    .unwrap_or_else(|_| "n/a".to_owned());

    let mut records: Vec<ArmRecord> = selected
        .iter()
        .map(|&arm| ArmRecord {
            arm,
            status: ArmStatus::Ok,
            reps: Vec::new(),
        })
        .collect();
    if let Some(r) = records.iter_mut().find(|r| r.arm == Arm::NftFlowtable) {
        if let Err(reason) = arms::flowtable_support() {
            println!("nftables-flowtable: unsupported: {reason}");
            r.status = ArmStatus::Unsupported(reason);
        }
        arms::check_clean().context("after the flowtable probe")?;
    }

    let mut samples: Vec<Sample> = Vec::new();
    let mut memory_default: Option<Value> = None;
    for rep in 0..reps {
        for rec in records.iter_mut() {
            proc::check_interrupt()?;
            if !matches!(rec.status, ArmStatus::Ok) {
                continue;
            }
            let arm = rec.arm;
            println!("-- rep {}/{reps} {}", rep + 1, arm.name());
            arms::check_clean().with_context(|| format!("before the {} arm", arm.name()))?;
            let active = match arms::setup(ctx, arm) {
                Ok(a) => a,
                Err(e) => {
                    let msg = format!("set-up failed: {e:#}");
                    println!("   {} ABORTED: {msg}", arm.name());
                    rec.status = ArmStatus::Aborted(msg);
                    arms::remove_everything(arms::iptables_is_nft());
                    continue;
                }
            };
            let mut rep_info = json!({"rep": rep + 1, "state": arms::describe_state(arm)});
            if let Some(d) = &active.daemon {
                rep_info["bpfnat_ready"] = json!(d.ready_line);
                rep_info["bpfnat_programs"] =
                    json!(d.programs.iter().map(|p| &p.name).collect::<Vec<_>>());
                if memory_default.is_none() {
                    memory_default = scale::map_memory(&d.programs).ok();
                }
            }
            // Both families must translate before anything is measured.
            let mut checks = serde_json::Map::new();
            let mut failed = None;
            for family in topo::Family::ALL {
                let expect = arm.expected_peer(family);
                match workloads::translation_check(ctx, family, expect) {
                    Ok(v) => {
                        println!(
                            "   translation check {}: server saw {}, {} UDP echoes back",
                            family.name(),
                            v["tcp_peer_seen_by_server"].as_str().unwrap_or("?"),
                            v["udp_echoes_back"]
                        );
                        checks.insert(family.name().to_owned(), v);
                    }
                    Err(e) => {
                        failed = Some(format!(
                            "{} translation check failed (expected the server to see \
                             {expect}): {e:#}",
                            family.name()
                        ));
                        break;
                    }
                }
            }
            rep_info["translation_check"] = Value::Object(checks);
            if let Some(msg) = failed {
                println!("   {} ABORTED: {msg}", arm.name());
                rec.status = ArmStatus::Aborted(msg);
                rec.reps.push(rep_info);
                active.teardown()?;
                continue;
            }
            // Is netfilter's conntrack involved at all? (Not in routed and bpfnat.)
            rep_info["host_conntrack_entries_after_check"] = json!(arms::conntrack_count().ok());
            for &w in workloads {
                proc::check_interrupt()?;
                let result = workloads::run(ctx, w).map_err(|e| format!("{e:#}"));
                match &result {
                    Ok(m) => println!(
                        "   {:<15} {}{}",
                        w.name(),
                        m.values
                            .iter()
                            .map(|(k, v)| format!("{} {}", k.format(*v), k.unit()))
                            .chain(m.unresolved.iter().map(|(k, _)| {
                                format!("{}: below the clock's resolution", k.id())
                            }))
                            .collect::<Vec<_>>()
                            .join(", "),
                        if m.notes.is_empty() {
                            String::new()
                        } else {
                            format!("  [{}]", m.notes.join("; "))
                        }
                    ),
                    Err(e) => println!("   {:<15} FAILED: {e}", w.name()),
                }
                samples.push(Sample {
                    rep,
                    arm,
                    workload: w,
                    result,
                });
            }
            if let Some(d) = &active.daemon {
                rep_info["bpfnat_stats"] = d.stats(ctx).unwrap_or_else(|e| json!(format!("{e:#}")));
            }
            rec.reps.push(rep_info);
            active
                .teardown()
                .with_context(|| format!("removing the {} arm", arm.name()))?;
        }
    }

    // The per-program profile: where a packet's time in the datapath goes, tracing off and
    // on (filtered out). Its own private topology; runs once (it repeats internally).
    let profile = if selected.contains(&Arm::Bpfnat) {
        println!("-- profile: each program per path, BPF_PROG_TEST_RUN");
        let runs = if quick { "2000" } else { "20000" };
        let out = cmd(Command::new(&ctx.bpfnat).args(["--json", "profile", "--runs", runs]))
            .and_then(|text| Ok(serde_json::from_str::<Value>(&text)?));
        match out {
            Ok(v) if v.as_array().is_some_and(|a| !a.is_empty()) => {
                for case in v.as_array().into_iter().flatten() {
                    println!(
                        "   {:<18} trace {:<3} {:>6} ns",
                        case["case"].as_str().unwrap_or("?"),
                        if case["trace_on"].as_bool() == Some(true) {
                            "on"
                        } else {
                            "off"
                        },
                        case["median_ns"]
                    );
                }
                Some(v)
            }
            Ok(v) => bail!("bpfnat profile gave no cases: {v}"),
            Err(e) => bail!("bpfnat profile failed: {e:#}"),
        }
    } else {
        None
    };

    // Where the 4-flow stream's CPU goes, per arm (not in --quick: 1-second runs are too
    // short to sample, and perf is not what the smoke test checks).
    let stream_cpu = if !quick && workloads.contains(&Workload::Stream4) {
        let ok: Vec<Arm> = records
            .iter()
            .filter(|r| matches!(r.status, ArmStatus::Ok))
            .map(|r| r.arm)
            .collect();
        Some(match cpu_profile::available() {
            Ok(()) => cpu_profile::run(ctx, &ok),
            Err(reason) => json!({ "unavailable": reason }),
        })
    } else {
        None
    };

    let run_scale = !quick
        && !args.no_scale
        && records
            .iter()
            .any(|r| r.arm == Arm::Bpfnat && matches!(r.status, ArmStatus::Ok));
    let scale = if run_scale {
        println!("-- scale: bpfnat with 0 / 100,000 / 1,000,000 table entries");
        match scale::run(ctx, reps) {
            Ok(v) => Some(v),
            Err(e) => {
                println!("   scale section FAILED: {e:#}");
                Some(json!({"error": format!("{e:#}")}))
            }
        }
    } else {
        None
    };
    drop(topology);

    let summary = report::summarize(&records, &samples);
    let results = report::to_json(
        &report::Meta {
            machine,
            date: date.to_owned(),
            reps,
            seconds,
            cpu_rate,
            quick,
            topology: topo::Topology::describe(),
            bridge_nf_call_iptables: bridge_nf,
            elapsed_s: started.elapsed().as_secs_f64(),
            memory_default,
            scale,
            pinned: ctx.pin && ctx.cores >= 2,
            profile,
            stream_cpu,
            cpu_time_source: ctx.cpu_clock.describe(),
        },
        &records,
        &samples,
        &summary,
    );
    let markdown = report::markdown(&results, &summary);
    let svg = report::svg(&results, &summary);

    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let kernel = results["machine"]["kernel"].as_str().unwrap_or("unknown");
    let stem = unique_stem(out_dir, &format!("{}-{kernel}", &date[..10]));
    let md_path = out_dir.join(format!("{stem}.md"));
    let markdown = markdown.replace("CHART.svg", &format!("{stem}.svg"));
    fs::write(&md_path, &markdown)?;
    fs::write(
        out_dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    fs::write(out_dir.join(format!("{stem}.svg")), &svg)?;
    fs::write(out_dir.join("latest.md"), &markdown)?;
    println!("\n{markdown}");
    println!(
        "results: {} (.json, .svg; latest.md) in {:.0} s",
        md_path.display(),
        started.elapsed().as_secs_f64()
    );

    // Whatever the mode, a run where an arm could not be measured is a failed run.
    let mut problems: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.status {
            ArmStatus::Aborted(why) => Some(format!("{}: {why}", r.arm.name())),
            _ => None,
        })
        .collect();
    if quick {
        let (quick_problems, unresolved) = quick_check(&records, &samples);
        problems.extend(quick_problems);
        for u in &unresolved {
            println!("bench --quick: reported, not failed: {u}");
        }
    }
    if !problems.is_empty() {
        bail!("bench: {}", problems.join("\n  "));
    }
    if quick {
        println!(
            "bench --quick: every arm translated as expected and every workload moved traffic \
             and produced a number or a reason why it could not"
        );
    }
    Ok(())
}

/// What `--quick` asserts, on any machine: every arm that ran translated (an aborted arm is
/// already a problem), and every workload moved traffic and produced each of its figures,
/// except a figure below its clock's resolution, which is reported (second list), not failed.
fn quick_check(records: &[ArmRecord], samples: &[Sample]) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut unresolved = Vec::new();
    for s in samples {
        let tag = format!("{} {}", s.arm.name(), s.workload.name());
        let m = match &s.result {
            Err(e) => {
                problems.push(format!("{tag}: {e}"));
                continue;
            }
            Ok(m) => m,
        };
        for metric in s.workload.metrics() {
            let figure = m
                .values
                .iter()
                .any(|(k, v)| *k == metric && v.is_finite() && *v > 0.0);
            let why = m.unresolved.iter().find(|(k, _)| *k == metric);
            match (figure, why) {
                (true, _) => {}
                (false, Some((_, why))) => {
                    unresolved.push(format!("{tag}: {}: {why}", metric.id()))
                }
                (false, None) => problems.push(format!("{tag}: no number for {}", metric.id())),
            }
        }
    }
    if !records.iter().any(|r| matches!(r.status, ArmStatus::Ok)) {
        problems.push("no arm was measured".to_owned());
    }
    (problems, unresolved)
}

/// `<stem>`, or `<stem>-2`, `-3`... if results with that name exist.
fn unique_stem(dir: &Path, stem: &str) -> String {
    let taken = |s: &str| dir.join(format!("{s}.json")).exists();
    if !taken(stem) {
        return stem.to_owned();
    }
    (2..)
        .map(|n| format!("{stem}-{n}"))
        .find(|s| !taken(s))
        .unwrap_or_else(|| stem.to_owned())
}

/// `cargo build --release -p bpfnat -p bpfnat-loadgen`; the two binaries.
fn build_binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--package",
            "bpfnat",
            "--package",
            "bpfnat-loadgen",
        ])
        .current_dir(workspace_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p bpfnat -p bpfnat-loadgen failed");
    }
    let dir = crate::target_dir().join("release");
    let (bpfnat, loadgen) = (dir.join("bpfnat"), dir.join("bpfnat-loadgen"));
    for b in [&bpfnat, &loadgen] {
        if !b.exists() {
            bail!("{} missing after the build", b.display());
        }
    }
    Ok((bpfnat, loadgen))
}

fn machine_info(date: &str) -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let mem_kib: u64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let version = |prog: &str, arg: &str| {
        cmd(Command::new(prog).arg(arg))
            .map(|s| s.lines().next().unwrap_or("").trim().to_owned())
            .unwrap_or_default()
    };
    let git = |args: &[&str]| {
        cmd(Command::new("git").args(args).current_dir(workspace_root()))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let loadavg = fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    json!({
        "date": date,
        "cpu_model": model,
        "cores": cores,
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": kernel,
        "iptables": version("iptables", "--version"),
        "nft": version("nft", "--version"),
        "bpftool": version("bpftool", "version"),
        "git_commit": git(&["rev-parse", "--short", "HEAD"]),
        "git_dirty": dirty,
        "loadavg_at_start": loadavg,
    })
}

/// Medians etc. need the samples of one (arm, metric).
pub fn values_of(samples: &[Sample], arm: Arm, metric: Metric) -> BTreeMap<usize, f64> {
    samples
        .iter()
        .filter(|s| s.arm == arm)
        .filter_map(|s| {
            let m = s.result.as_ref().ok()?;
            let v = m.values.iter().find(|(k, _)| *k == metric)?.1;
            Some((s.rep, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpu_time::CpuBusy;

    /// The quick check of one arm that ran one workload once.
    fn check_one(
        arm: Arm,
        workload: Workload,
        m: workloads::Measured,
    ) -> (Vec<String>, Vec<String>) {
        let record = ArmRecord {
            arm,
            status: ArmStatus::Ok,
            reps: vec![],
        };
        let sample = Sample {
            rep: 0,
            arm,
            workload,
            result: Ok(m),
        };
        quick_check(&[record], &[sample])
    }

    /// A fixed-rate run on a machine so fast that /proc/stat saw no tick: the quick check
    /// reports it and does not fail; a workload with no figure and no reason still fails.
    #[test]
    fn quick_check_reports_a_zero_cpu_delta_instead_of_failing() {
        let zero_ticks = CpuBusy {
            busy_ns: 0.0,
            total_ns: 2e9,
            resolution_ns: 1e7,
        };
        let cpu = workloads::cpu_per_packet(zero_ticks, 10_000.0, json!({}), vec![], "/proc/stat");
        assert!(cpu.values.is_empty(), "no made-up figure");
        let (problems, unresolved) = check_one(Arm::Routed, Workload::Cpu, cpu);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(unresolved.len(), 1);
        assert!(
            unresolved[0].contains("routed cpu-fixed-rate: cpu_ns_per_packet")
                && unresolved[0].contains("below the resolution of /proc/stat"),
            "{unresolved:?}"
        );

        // Enough ticks: a figure, nothing to report.
        let ticks = CpuBusy {
            busy_ns: 2e8,
            ..zero_ticks
        };
        let cpu = workloads::cpu_per_packet(ticks, 10_000.0, json!({}), vec![], "/proc/stat");
        assert_eq!(cpu.values, vec![(Metric::CpuNsPerPkt, 20_000.0)]);

        // A workload that produced neither a figure nor a reason is a failure.
        let empty = workloads::Measured {
            values: vec![],
            unresolved: vec![],
            raw: json!({}),
            notes: vec![],
        };
        let (problems, _) = check_one(Arm::Bpfnat, Workload::UdpPps, empty);
        assert_eq!(
            problems,
            vec!["bpfnat udp-pps: no number for udp_pps_forwarded".to_owned()]
        );
    }
}
