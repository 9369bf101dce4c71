//! Where the machine's CPU time goes during the 4-flow TCP stream, per arm: one extra run of
//! that workload per arm after the repetitions, sampled with `perf record -e cpu-clock -a`
//! (a timer, so it works on VMs without a PMU), then each sample's kernel or user symbol put
//! in a bucket: the copies between user and kernel, netfilter, the BPF programs and helpers,
//! the bridge, IP forwarding and routing, idle, and the rest (the endpoints' TCP/IP, veth,
//! softirq, scheduler, memory).
//!
//! It answers "how much could a faster NAT win on this workload at all": when the busiest
//! CPU is saturated, an arm's throughput goes with the inverse of that CPU's work per byte,
//! so a NAT costing nothing could beat iptables by at most 1 / (1 - the share of the busiest
//! CPU that iptables spends in netfilter, the bridge and routing).

use std::{collections::BTreeMap, fmt::Write as _, process::Command, thread, time::Duration};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::{
    arms::{self, Arm},
    proc::{self, Proc},
    topo::Family,
    workloads::{self, Metric, Workload},
    Ctx,
};

/// What a sampled symbol is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bucket {
    Idle,
    Copies,
    Netfilter,
    Bpf,
    Bridge,
    Routing,
    Other,
}

impl Bucket {
    pub const BUSY: [Bucket; 6] = [
        Bucket::Copies,
        Bucket::Netfilter,
        Bucket::Bpf,
        Bucket::Bridge,
        Bucket::Routing,
        Bucket::Other,
    ];

    fn id(self) -> &'static str {
        match self {
            Bucket::Idle => "idle",
            Bucket::Copies => "copies",
            Bucket::Netfilter => "netfilter",
            Bucket::Bpf => "bpf",
            Bucket::Bridge => "bridge",
            Bucket::Routing => "routing",
            Bucket::Other => "other",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Bucket::Idle => "idle",
            Bucket::Copies => "user copies",
            Bucket::Netfilter => "netfilter",
            Bucket::Bpf => "BPF programs + helpers",
            Bucket::Bridge => "bridge",
            Bucket::Routing => "forwarding + routing",
            Bucket::Other => "the rest (TCP/IP endpoints, veth, softirq, scheduler)",
        }
    }

    /// The buckets that are the NAT and forwarding path (what differs between arms).
    fn is_path(self) -> bool {
        matches!(
            self,
            Bucket::Netfilter | Bucket::Bpf | Bucket::Bridge | Bucket::Routing
        )
    }
}

/// The bucket of a symbol as `perf report` prints it (`user` for a `[.]` symbol).
pub fn bucket(symbol: &str, user: bool) -> Bucket {
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| symbol.starts_with(p));
    if user {
        return Bucket::Other;
    }
    if symbol.contains("safe_halt")
        || starts(&[
            "default_idle",
            "cpuidle",
            "poll_idle",
            "acpi_idle",
            "mwait_idle",
            "do_idle",
        ])
    {
        Bucket::Idle
    } else if starts(&[
        "_copy_to_iter",
        "_copy_from_iter",
        "copy_user",
        "rep_movs",
        "__check_object_size",
        "check_heap_object",
        "__virt_addr_valid",
        "skb_copy_datagram",
        "__skb_datagram_iter",
        "simple_copy_to_iter",
    ]) {
        Bucket::Copies
    } else if starts(&[
        "nf_",
        "__nf_",
        "nft_",
        "__nft_",
        "ipt_",
        "iptable_",
        "xt_",
        "br_nf_",
        "ipv4_conntrack",
        "l4proto_manip_pkt",
        "masquerade",
        "ip_sabotage",
    ]) {
        Bucket::Netfilter
    } else if starts(&[
        "bpf_",
        "__bpf_",
        "___bpf_",
        "tcx_",
        "skb_do_redirect",
        "lookup_nulls_elem_raw",
        "htab_",
        "__htab_",
        "trie_lookup",
        "longest_prefix_match",
        "array_map_",
        "percpu_array_map_",
    ]) {
        Bucket::Bpf
    } else if starts(&["br_", "fdb_", "nbp_", "__br_"]) {
        Bucket::Bridge
    } else if starts(&[
        "ip_forward",
        "ip_route_input",
        "ip_route_use_hint",
        "fib_",
        "__fib_",
        "ip_skb_dst_mtu",
        "neigh_",
        "__neigh_",
        "ipv4_dst_check",
    ]) {
        Bucket::Routing
    } else {
        Bucket::Other
    }
}

/// One line of `perf report --sort cpu,sym`: share of all samples, CPU, symbol, user or not.
#[derive(Debug, PartialEq)]
pub struct Line {
    pub percent: f64,
    pub cpu: usize,
    pub symbol: String,
    pub user: bool,
}

/// Parse `perf report --stdio --no-children --sort cpu,sym -g none` output; headers and
/// blank lines are skipped.
pub fn parse_report(text: &str) -> Vec<Line> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let percent = it.next()?.strip_suffix('%')?.parse().ok()?;
            let cpu = it.next()?.parse().ok()?;
            let user = match it.next()? {
                "[k]" => false,
                "[.]" => true,
                _ => return None,
            };
            let symbol = it.collect::<Vec<_>>().join(" ");
            Some(Line {
                percent,
                cpu,
                symbol,
                user,
            })
        })
        .collect()
}

/// Per CPU: its share of the samples (the profile covers every CPU for the same time), the
/// busy fraction and each bucket's share of that CPU.
pub fn per_cpu(lines: &[Line]) -> BTreeMap<usize, BTreeMap<Bucket, f64>> {
    let mut cpus: BTreeMap<usize, BTreeMap<Bucket, f64>> = BTreeMap::new();
    for l in lines {
        *cpus
            .entry(l.cpu)
            .or_default()
            .entry(bucket(&l.symbol, l.user))
            .or_default() += l.percent;
    }
    for buckets in cpus.values_mut() {
        let total: f64 = buckets.values().sum();
        if total > 0.0 {
            for v in buckets.values_mut() {
                *v /= total;
            }
        }
    }
    cpus
}

/// The busiest CPU's figures as JSON, plus every CPU's busy fraction.
fn busiest_json(cpus: &BTreeMap<usize, BTreeMap<Bucket, f64>>) -> Option<Value> {
    let idle = |b: &BTreeMap<Bucket, f64>| b.get(&Bucket::Idle).copied().unwrap_or(0.0);
    let (&cpu, buckets) = cpus.iter().min_by(|a, b| idle(a.1).total_cmp(&idle(b.1)))?;
    let mut shares = serde_json::Map::new();
    for b in Bucket::BUSY {
        shares.insert(
            b.id().into(),
            json!(buckets.get(&b).copied().unwrap_or(0.0)),
        );
    }
    let path: f64 = Bucket::BUSY
        .iter()
        .filter(|b| b.is_path())
        .map(|b| buckets.get(b).copied().unwrap_or(0.0))
        .sum();
    Some(json!({
        "busiest_cpu": cpu,
        "busy": 1.0 - idle(buckets),
        "shares": shares,
        "path_share": path,
        "busy_per_cpu": cpus.iter().map(|(c, b)| json!({"cpu": c, "busy": 1.0 - idle(b)})).collect::<Vec<_>>(),
    }))
}

/// One more 4-flow stream per arm with the sampler on; an arm that fails is reported as such.
pub fn run(ctx: &Ctx, arms: &[Arm]) -> Value {
    let mut out = Vec::new();
    for &arm in arms {
        println!("-- where the stream's CPU goes: {}", arm.name());
        let result = profile_arm(ctx, arm);
        match &result {
            Ok(v) => println!(
                "   busiest CPU {} {:.0} % busy, NAT + forwarding path {:.1} % of it, {} Gbit/s",
                v["busiest_cpu"],
                v["busy"].as_f64().unwrap_or(0.0) * 100.0,
                v["path_share"].as_f64().unwrap_or(0.0) * 100.0,
                v["gbps"]
            ),
            Err(e) => println!("   FAILED: {e:#}"),
        }
        out.push(match result {
            Ok(mut v) => {
                v["arm"] = json!(arm.name());
                v
            }
            Err(e) => json!({"arm": arm.name(), "error": format!("{e:#}")}),
        });
    }
    json!({
        "workload": Workload::Stream4.name(),
        "tool": "perf record -e cpu-clock -a (timer sampling, all CPUs), perf report --sort cpu,sym",
        "arms": out,
    })
}

fn profile_arm(ctx: &Ctx, arm: Arm) -> anyhow::Result<Value> {
    proc::check_interrupt()?;
    arms::check_clean().with_context(|| format!("before profiling {}", arm.name()))?;
    let active = arms::setup(ctx, arm)?;
    let result = (|| {
        workloads::translation_check(ctx, Family::V4, arm.expected_peer(Family::V4))?;
        let data = ctx.scratch.join(format!("perf-{}.data", arm.name()));
        // Sample the middle of the run: the load generators need well under a second to
        // start, and the last half second may already be the drain.
        let window = (ctx.seconds - 1.5).max(1.0);
        let sampler = {
            let data = data.clone();
            let scratch = ctx.scratch.clone();
            thread::spawn(move || -> anyhow::Result<()> {
                thread::sleep(Duration::from_secs(1));
                let mut c = Command::new("perf");
                c.args(["record", "-e", "cpu-clock", "-a", "-q", "-o"])
                    .arg(&data)
                    .args(["--", "sleep", &format!("{window:.1}")]);
                let done = Proc::spawn("perf-record", c, &scratch)?
                    .finish(Duration::from_secs_f64(window + 20.0))?;
                if !done.status.success() {
                    bail!("perf record failed: {}", proc::tail(&done.stderr));
                }
                Ok(())
            })
        };
        let measured = workloads::run(ctx, Workload::Stream4);
        sampler
            .join()
            .map_err(|_| anyhow::anyhow!("the perf thread panicked"))??;
        let measured = measured?;
        let report = crate::cmd(
            Command::new("perf")
                .args(["report", "--stdio", "--no-children", "--sort", "cpu,sym"])
                .args(["-g", "none", "--percent-limit", "0", "-i"])
                .arg(&data),
        )?;
        let _ = std::fs::remove_file(&data);
        let lines = parse_report(&report);
        let mut v = busiest_json(&per_cpu(&lines)).context("perf report gave no samples")?;
        v["gbps"] = json!(measured
            .values
            .iter()
            .find(|(m, _)| *m == Metric::Stream4)
            .map(|(_, g)| (g * 100.0).round() / 100.0));
        Ok(v)
    })();
    active
        .teardown()
        .with_context(|| format!("removing the {} arm", arm.name()))?;
    result
}

/// Is `perf` there and able to sample the CPU clock?
pub fn available() -> Result<(), String> {
    let out = Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-a",
            "-q",
            "-o",
            "/dev/null",
            "--",
            "true",
        ])
        .output()
        .map_err(|e| format!("perf: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "perf record failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The share of its busiest CPU that `arm` spent on the NAT and forwarding path.
fn path_share(v: &Value, arm: &str) -> Option<f64> {
    v["arms"].as_array()?.iter().find(|a| a["arm"] == arm)?["path_share"].as_f64()
}

/// The most any NAT could reach against iptables on the 4-flow stream here: iptables' own
/// throughput with its path's share of the busiest CPU taken away.
pub fn ceiling_vs_iptables(v: &Value) -> Option<f64> {
    path_share(v, "iptables")
        .filter(|s| *s < 1.0)
        .map(|s| 1.0 / (1.0 - s))
}

/// The report's section: a row per arm, then what it bounds.
pub fn markdown(md: &mut String, v: &Value) {
    let _ = writeln!(
        md,
        "## Where the 4-flow stream's CPU goes\n\n\
         One more `tcp-stream-4` run per arm after the repetitions, sampled by `perf record -e \
         cpu-clock -a` (timer sampling: these VMs have no PMU), each sample's symbol put in a \
         bucket. Shares of the busiest CPU's samples; \"path\" is netfilter + BPF + bridge + \
         forwarding, the part that differs between arms. When that CPU is saturated, \
         throughput goes with the inverse of its work per byte.\n"
    );
    if let Some(reason) = v["unavailable"].as_str() {
        let _ = writeln!(md, "Not measured: {reason}\n");
        return;
    }
    let _ = write!(md, "| arm | Gbit/s | busiest CPU (busy) |");
    for b in Bucket::BUSY {
        let _ = write!(md, " {} |", b.title());
    }
    let _ = writeln!(md, " path |");
    let _ = writeln!(
        md,
        "|---|---:|---:|{}---:|",
        "---:|".repeat(Bucket::BUSY.len())
    );
    let pct = |x: &Value| {
        x.as_f64()
            .map_or("–".into(), |x| format!("{:.1} %", x * 100.0))
    };
    let arms = v["arms"].as_array().cloned().unwrap_or_default();
    for a in &arms {
        let name = a["arm"].as_str().unwrap_or("?");
        if let Some(e) = a["error"].as_str() {
            let _ = writeln!(md, "| {name} | failed: {} |", e.replace('|', "/"));
            continue;
        }
        let _ = write!(
            md,
            "| {name} | {} | CPU {} ({}) |",
            a["gbps"],
            a["busiest_cpu"],
            pct(&a["busy"])
        );
        for b in Bucket::BUSY {
            let _ = write!(md, " {} |", pct(&a["shares"][b.id()]));
        }
        let _ = writeln!(md, " {} |", pct(&a["path_share"]));
    }
    if let (Some(ipt), Some(ceiling)) = (path_share(v, "iptables"), ceiling_vs_iptables(v)) {
        let _ = writeln!(
            md,
            "\nThe ceiling: iptables spends {:.1} % of its busiest CPU on the path, so a NAT \
             datapath costing nothing (no netfilter, no bridge, no routing lookup) could move \
             this workload to at most {ceiling:.2}× iptables here{}.",
            ipt * 100.0,
            path_share(v, "bpfnat").map_or(String::new(), |b| format!(
                "; bpfnat's path is {:.1} % of its busiest CPU",
                b * 100.0
            ))
        );
    }
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
# Samples: 3K of event 'cpu-clock'
#
    23.71%  000  [k] pv_native_safe_halt
    12.27%  001  [k] _copy_to_iter
     9.07%  000  [k] _copy_from_iter
     5.00%  001  [k] nft_do_chain
     4.00%  001  [k] bpf_prog_869c312af319d363_nat_egress
     3.00%  001  [k] br_handle_frame
     2.00%  001  [k] br_nf_pre_routing
     2.00%  001  [k] ip_forward
    23.73%  001  [k] tcp_ack
    10.00%  000  [.] bpfnat_loadgen::stream::send_flows
     5.22%  000  [k] tcp_sendmsg_locked
";

    #[test]
    fn buckets_and_busiest_cpu() {
        let lines = parse_report(REPORT);
        assert_eq!(lines.len(), 11);
        assert_eq!(
            lines[9],
            Line {
                percent: 10.0,
                cpu: 0,
                symbol: "bpfnat_loadgen::stream::send_flows".into(),
                user: true
            }
        );
        let cpus = per_cpu(&lines);
        let v = busiest_json(&cpus).unwrap();
        // CPU 1 has no idle sample: it is the busiest.
        assert_eq!(v["busiest_cpu"], 1);
        assert!((v["busy"].as_f64().unwrap() - 1.0).abs() < 1e-9);
        let total1 = 12.27 + 5.0 + 4.0 + 3.0 + 2.0 + 2.0 + 23.73;
        let share = |b: &str| v["shares"][b].as_f64().unwrap();
        assert!((share("netfilter") - 7.0 / total1).abs() < 1e-9);
        assert!((share("bpf") - 4.0 / total1).abs() < 1e-9);
        assert!((share("bridge") - 3.0 / total1).abs() < 1e-9);
        assert!((share("routing") - 2.0 / total1).abs() < 1e-9);
        assert!((share("copies") - 12.27 / total1).abs() < 1e-9);
        assert!((v["path_share"].as_f64().unwrap() - 16.0 / total1).abs() < 1e-9);
        // CPU 0 is about half idle.
        let idle0 = cpus[&0][&Bucket::Idle];
        assert!((idle0 - 23.71 / (23.71 + 9.07 + 10.0 + 5.22)).abs() < 1e-9);
    }

    #[test]
    fn user_symbols_are_never_kernel_buckets() {
        assert_eq!(bucket("nf_hook_slow", false), Bucket::Netfilter);
        assert_eq!(bucket("nf_hook_slow", true), Bucket::Other);
        assert_eq!(bucket("fib_table_lookup", false), Bucket::Routing);
        assert_eq!(bucket("bpf_fib_lookup", false), Bucket::Bpf);
        assert_eq!(bucket("br_nf_pre_routing", false), Bucket::Netfilter);
    }
}
