//! bpfnat with full tables: 0, 100,000 and 1,000,000 synthetic mappings written through the
//! pinned `NAT_OUT`/`NAT_IN` maps (`BPF_MAP_UPDATE_BATCH`), then RR, CRR and UDP pps again, with
//! the per-run time of our programs from `kernel.bpf_stats_enabled`, the daemon's CPU time (its
//! sweeper walks the table) and the maps' memory. Every repetition measures all three sizes
//! (the synthetic mappings are written and removed in a few seconds), so each full-table figure
//! has an empty-table figure from the same minutes to be compared with. The sizes go up in one
//! repetition and down in the next (0, 100k, 1M, then 1M, 100k, 0, ...): a machine that drifts
//! during a repetition then favours the full table in one and the empty table in the other,
//! instead of always the same one.

use std::{
    fmt::Write as _,
    fs,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use bpfnat_common::{
    batch::{self, BatchAttr},
    FlowKey, NatEntry, IPPROTO_TCP, NAT_FLAG_ORIGINAL, TCP_SEEN_ACK, TCP_SEEN_SYN,
};
use serde_json::{json, Value};

use super::{
    arms::{self, bpftool_json, Prog},
    proc,
    topo::{self, Family, UPLINK_ADDR},
    workloads::{self, Metric, Workload},
    Ctx,
};

/// Entries per map for the scale runs (`bpfnat up --table-size`): room for 1M mappings
/// plus the benchmark's own.
pub const TABLE_SIZE: u64 = 2_097_152;
pub const POINTS: [u64; 3] = [0, 100_000, 1_000_000];
/// `FlowKey` and `NatEntry` as the kernel sees them (written here byte by byte).
const KEY_SIZE: u64 = std::mem::size_of::<FlowKey>() as u64;
const VALUE_SIZE: u64 = std::mem::size_of::<NatEntry>() as u64;
/// Both halves saw SYN and ACK: ESTABLISHED (idle timeout 5 days).
const SEEN_SYN_ACK: u8 = TCP_SEEN_SYN | TCP_SEEN_ACK;

/// Sets `kernel.bpf_stats_enabled` for the guard's lifetime and restores the old value.
struct BpfStats {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        let old = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(Self { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.old) {
            eprintln!("bench: could not restore {BPF_STATS} to {}: {e}", self.old);
        }
    }
}

/// run_time_ns and run_cnt of each program.
fn prog_stats(progs: &[Prog]) -> Vec<(String, u64, u64)> {
    progs
        .iter()
        .map(|p| {
            let v = bpftool_json(&["prog", "show", "id", &p.id.to_string()]).unwrap_or(Value::Null);
            (
                p.name.clone(),
                v["run_time_ns"].as_u64().unwrap_or(0),
                v["run_cnt"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// utime + stime of a process, in clock ticks.
fn process_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may contain spaces: count from the closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// bytes_memlock and max_entries of every map our programs use.
pub fn map_memory(progs: &[Prog]) -> anyhow::Result<Value> {
    let mut ids = Vec::new();
    for p in progs {
        let v = bpftool_json(&["prog", "show", "id", &p.id.to_string()])?;
        for id in v["map_ids"].as_array().into_iter().flatten() {
            if let Some(id) = id.as_u64() {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    let mut maps = Vec::new();
    let mut total = 0u64;
    for id in ids {
        let m = bpftool_json(&["map", "show", "id", &id.to_string()])?;
        let bytes = m["bytes_memlock"].as_u64().unwrap_or(0);
        total += bytes;
        maps.push(json!({
            "name": m["name"],
            "type": m["type"],
            "max_entries": m["max_entries"],
            "bytes_key": m["bytes_key"],
            "bytes_value": m["bytes_value"],
            "bytes_memlock": bytes,
        }));
    }
    Ok(json!({"maps": maps, "total_bytes_memlock": total}))
}

/// CLOCK_MONOTONIC is what the datapath stamps; /proc/uptime is CLOCK_BOOTTIME, never behind
/// it, so the synthetic entries look fresh (the sweeper saturates negative idle times) and
/// stay far inside the 5-day ESTABLISHED timeout.
fn now_ns() -> anyhow::Result<u64> {
    let up = fs::read_to_string("/proc/uptime")?;
    let secs: f64 = up
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .context("/proc/uptime")?;
    Ok((secs * 1e9) as u64)
}

/// Mapping number `i`: internal 10.91.x.y:(1024+k) -> 198.18.x.y:443 over TCP, external
/// UPLINK:(1024+k). None of it can match the benchmark's traffic (client 10.90.0.2, server
/// 198.51.100.90).
fn entry(i: u64, now: u64) -> (FlowKey, NatEntry, FlowKey, NatEntry) {
    let (j, k) = ((i / 60_000) as u16, (i % 60_000) as u16);
    let [jh, jl] = j.to_be_bytes();
    let addr = |octets: [u8; 4]| u32::from_ne_bytes(octets);
    let internal = addr([10, 91, jh, jl]);
    let remote = addr([198, 18, jh, jl]);
    let external = addr(UPLINK_ADDR.octets());
    let port = (1024 + k).to_be();
    let rport = 443u16.to_be();
    // Typed, so the bytes follow the shared types' layout whatever it becomes.
    let half = |addr: u32, flags: u8| NatEntry {
        last_seen_ns: now,
        created_ns: now,
        packets: 1,
        bytes: 60,
        addr,
        port,
        flags,
        tcp_flags: SEEN_SYN_ACK,
        ..NatEntry::default()
    };
    (
        FlowKey::new(internal, remote, port, rport, IPPROTO_TCP),
        half(external, NAT_FLAG_ORIGINAL),
        FlowKey::new(remote, external, rport, port, IPPROTO_TCP),
        half(internal, 0),
    )
}

/// Check the maps have the layout we write.
fn check_layout() -> anyhow::Result<()> {
    for name in ["NAT_OUT", "NAT_IN"] {
        let pin = topo::pin_dir().join(name);
        let m = bpftool_json(&["map", "show", "pinned", &pin.to_string_lossy()])?;
        let (k, v, max) = (
            m["bytes_key"].as_u64().unwrap_or(0),
            m["bytes_value"].as_u64().unwrap_or(0),
            m["max_entries"].as_u64().unwrap_or(0),
        );
        if k != KEY_SIZE || v != VALUE_SIZE {
            bail!(
                "{name} has {k}-byte keys and {v}-byte values; the synthetic entries are written \
                 as FlowKey ({KEY_SIZE} B) -> NatEntry ({VALUE_SIZE} B): update \
                 xtask/src/bench/scale.rs for the new layout"
            );
        }
        if max < TABLE_SIZE {
            bail!("{name} has {max} entries, expected --table-size {TABLE_SIZE}");
        }
    }
    Ok(())
}

/// A pinned map, opened with `BPF_OBJ_GET`.
struct PinnedMap(std::os::fd::OwnedFd);

impl PinnedMap {
    fn open(name: &str) -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd as _;
        let path = topo::pin_dir().join(name);
        let c_path = std::ffi::CString::new(path.to_string_lossy().as_bytes())?;
        let fd = batch::obj_get(&c_path)
            .map_err(std::io::Error::from_raw_os_error)
            .with_context(|| format!("opening the pinned map {}", path.display()))?;
        // SAFETY: the kernel just gave us this descriptor, and nothing else owns it.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn fd(&self) -> u32 {
        use std::os::fd::AsRawFd as _;
        self.0.as_raw_fd() as u32
    }

    /// Write `count` entries (keys and values packed back to back) in one syscall.
    fn update_batch(&self, keys: &[u8], values: &[u8], count: usize) -> anyhow::Result<()> {
        self.batch(
            batch::BPF_MAP_UPDATE_BATCH,
            "BPF_MAP_UPDATE_BATCH",
            keys,
            Some(values),
            count,
        )
    }

    /// Delete `count` keys (packed back to back) in one syscall.
    fn delete_batch(&self, keys: &[u8], count: usize) -> anyhow::Result<()> {
        self.batch(
            batch::BPF_MAP_DELETE_BATCH,
            "BPF_MAP_DELETE_BATCH",
            keys,
            None,
            count,
        )
    }

    /// One batch command over `count` keys (and values, for an update).
    fn batch(
        &self,
        cmd: i64,
        name: &str,
        keys: &[u8],
        values: Option<&[u8]>,
        count: usize,
    ) -> anyhow::Result<()> {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.map_or(0, |v| v.as_ptr() as u64),
            count: count as u32,
            map_fd: self.fd(),
            ..Default::default()
        };
        // SAFETY: a batch attribute block whose pointers refer to live buffers holding `count`
        // keys (and values) of the map's sizes.
        unsafe { batch::bpf(cmd, &mut attr) }
            .map(drop)
            .map_err(std::io::Error::from_raw_os_error)
            .with_context(|| format!("{name}: {} of {count} done", attr.count))
    }
}

/// Mappings per batch syscall: bounds the buffers (about 3.5 MiB) and each call's time.
const BATCH: u64 = 65_536;

/// The synthetic mappings `from..to`, both halves, written (reply half first, as the datapath
/// does) or removed in batches.
fn synthetic(from: u64, to: u64, write: bool) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let now = now_ns()?;
    let out = PinnedMap::open("NAT_OUT")?;
    let inbound = PinnedMap::open("NAT_IN")?;
    let mut start = from;
    while start < to {
        proc::check_interrupt()?;
        let end = (start + BATCH).min(to);
        let n = (end - start) as usize;
        let (mut ok, mut ov, mut ik, mut iv) = (
            Vec::with_capacity(n * KEY_SIZE as usize),
            Vec::with_capacity(n * VALUE_SIZE as usize),
            Vec::with_capacity(n * KEY_SIZE as usize),
            Vec::with_capacity(n * VALUE_SIZE as usize),
        );
        for i in start..end {
            let (k1, v1, k2, v2) = entry(i, now);
            ok.extend_from_slice(bytemuck::bytes_of(&k1));
            ov.extend_from_slice(bytemuck::bytes_of(&v1));
            ik.extend_from_slice(bytemuck::bytes_of(&k2));
            iv.extend_from_slice(bytemuck::bytes_of(&v2));
        }
        if write {
            inbound.update_batch(&ik, &iv, n)?;
            out.update_batch(&ok, &ov, n)?;
        } else {
            // Original half first, as `conntrack delete` does.
            out.delete_batch(&ok, n)?;
            inbound.delete_batch(&ik, n)?;
        }
        start = end;
    }
    Ok(t0.elapsed())
}

/// The scale section: one daemon with room for 2M mappings; each repetition measures it empty,
/// with 100k and with 1M synthetic mappings, in serpentine order, so each size is measured
/// `reps` times interleaved with the others.
pub fn run(ctx: &Ctx, reps: usize) -> anyhow::Result<Value> {
    arms::check_clean()?;
    let _stats = BpfStats::enable()?;
    let mut points: Vec<Value> = Vec::new();
    let mut active = arms::setup_bpfnat(ctx, &["--table-size", &TABLE_SIZE.to_string()])?;
    let d = active.daemon.as_ref().context("daemon")?;
    check_layout()?;
    workloads::translation_check(ctx, Family::V4, UPLINK_ADDR.into())
        .context("bpfnat (scale) translation check")?;
    let memory = map_memory(&d.programs)?;
    let mut filled = 0;
    for rep in 0..reps {
        let mut order = POINTS;
        if rep % 2 == 1 {
            order.reverse();
        }
        for n in order {
            proc::check_interrupt()?;
            let fill_s = if n > filled {
                let t = synthetic(filled, n, true)?.as_secs_f64();
                filled = n;
                Some(t)
            } else {
                if n < filled {
                    let t = synthetic(n, filled, false)?;
                    println!(
                        "   removed mappings {}..{} in {:.1} s",
                        workloads::thousands(n as f64),
                        workloads::thousands(filled as f64),
                        t.as_secs_f64()
                    );
                    filled = n;
                }
                None
            };
            // `bpfnat stats` walks both tables from userspace, as the sweeper does.
            let walk = Instant::now();
            let stats = d.stats(ctx)?;
            let walk_s = walk.elapsed().as_secs_f64();
            let occupancy = stats["table"]["nat_out"].as_u64().unwrap_or(0);
            if occupancy < n {
                bail!("after writing {n} mappings, NAT_OUT holds {occupancy}");
            }
            if let Some(f) = fill_s {
                println!(
                    "   filled to {} mappings in {f:.1} s (NAT_OUT holds {}; `bpfnat stats` took {walk_s:.1} s)",
                    workloads::thousands(n as f64),
                    workloads::thousands(occupancy as f64)
                );
            }
            let mut p = measure_point(ctx, d, n, rep, occupancy, fill_s)?;
            p["stats_walk_seconds"] = json!(walk_s);
            points.push(p);
        }
    }
    // The stop is measured with the table full.
    let full = POINTS[POINTS.len() - 1];
    if filled < full {
        synthetic(filled, full, true)?;
        filled = full;
    }
    // Stopping with a full table can take long (the daemon finishes its sweep first).
    let daemon = active.daemon.take().context("daemon")?;
    let t0 = Instant::now();
    daemon.stop(Duration::from_secs(300))?;
    let stop_s = t0.elapsed().as_secs_f64();
    println!(
        "   bpfnat with {} mappings stopped in {stop_s:.1} s",
        workloads::thousands(filled as f64)
    );
    active.teardown()?;
    Ok(json!({
        "table_size": TABLE_SIZE,
        "points": points,
        "memory": memory,
        "stop_seconds_full_table": stop_s,
        "bpf_stats": "kernel.bpf_stats_enabled=1 during this section only (it adds two clock reads per program run)",
    }))
}

fn measure_point(
    ctx: &Ctx,
    d: &arms::Daemon,
    n: u64,
    rep: usize,
    occupancy: u64,
    fill_s: Option<f64>,
) -> anyhow::Result<Value> {
    let mut point = json!({
        "rep": rep + 1,
        "entries": n,
        "nat_out_occupancy": occupancy,
        "fill_seconds": fill_s,
    });
    let ticks0 = process_ticks(d.pid);
    let t0 = Instant::now();
    let mut line = format!(
        "   {:>9} entries, rep {}:",
        workloads::thousands(n as f64),
        rep + 1
    );
    let mut errors = Vec::new();
    for w in [Workload::Rr, Workload::Crr, Workload::UdpPps] {
        let before = prog_stats(&d.programs);
        let m = match workloads::run(ctx, w) {
            Ok(m) => m,
            Err(e) => {
                let _ = write!(line, " {} FAILED", w.name());
                errors.push(format!("{}: {e:#}", w.name()));
                continue;
            }
        };
        let after = prog_stats(&d.programs);
        let progs: Vec<Value> = before
            .iter()
            .zip(&after)
            .map(|((name, t0, c0), (_, t1, c1))| {
                let runs = c1.saturating_sub(*c0);
                json!({
                    "program": name,
                    "runs": runs,
                    "ns_per_run": (runs > 0).then(|| t1.saturating_sub(*t0) as f64 / runs as f64),
                })
            })
            .collect();
        for (metric, v) in &m.values {
            point[metric.id()] = json!(v);
            if matches!(
                metric,
                Metric::RrTps | Metric::RrP99 | Metric::CrrCps | Metric::UdpPps
            ) {
                let _ = write!(line, " {} {}", metric.format(*v), metric.unit());
            }
        }
        if w == Workload::UdpPps {
            for p in &progs {
                if let Some(ns) = p["ns_per_run"].as_f64() {
                    let _ = write!(
                        line,
                        ", {} {ns:.0} ns/run",
                        p["program"].as_str().unwrap_or("?")
                    );
                }
            }
        }
        point[format!("programs_during_{}", w.name())] = json!(progs);
    }
    let secs = t0.elapsed().as_secs_f64();
    let daemon_cpu = process_ticks(d.pid).saturating_sub(ticks0) as f64 / ctx.ticks;
    point["daemon_cpu_fraction"] = json!(daemon_cpu / secs);
    point["errors"] = json!(errors);
    let _ = write!(line, "; daemon CPU {:.0} %", daemon_cpu / secs * 100.0);
    println!("{line}");
    Ok(point)
}
