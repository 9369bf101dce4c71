//! Machine CPU time for the fixed-rate workload, with the finest clock this machine offers.
//!
//! The figure is the machine's busy time: every CPU's wall time minus the time it spent idle.
//! It includes everything the machine did in the window (the load generators, the forwarding
//! in softirq, interrupts, kernel threads, the daemon, and time the hypervisor took from a
//! CPU that had work), which is what the arms differ in.
//!
//! Two sources, the first one that works:
//! - **cpuidle residency** (`/sys/devices/system/cpu/cpuN/cpuidle/stateK/time`, µs): the
//!   kernel adds an idle period to these counters when it ends, so a CPU idle at the moment of
//!   reading would hide its current period. The sampler therefore runs a thread on each CPU in
//!   turn (`sched_setaffinity`) and reads that CPU's counters while it is, by construction,
//!   not idle; each CPU gets its own timestamp. Resolution: 1 µs per CPU.
//! - **`/proc/stat`** (user+nice+system+irq+softirq): counted in USER_HZ ticks (10 ms), so a
//!   short run at a low rate can show no tick at all.
//!
//! A window whose busy time is under [`MIN_RESOLUTION_STEPS`] steps of the source's
//! resolution is reported as unresolved instead of as a figure.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _};

/// A busy time below this many resolution steps is too coarse to report (its error could
/// exceed 10 %).
pub const MIN_RESOLUTION_STEPS: f64 = 10.0;

/// Where the machine's busy time comes from.
#[derive(Clone, Debug)]
pub enum CpuClock {
    /// cpuidle residency counters of every CPU (µs).
    Idle(Vec<IdleCpu>),
    /// The first line of /proc/stat, in ticks of `1 / ticks_per_sec` seconds.
    ProcStat { ticks_per_sec: f64 },
}

/// One CPU's cpuidle state counters.
#[derive(Clone, Debug)]
pub struct IdleCpu {
    cpu: usize,
    state_times: Vec<PathBuf>,
}

/// A reading of the clock.
#[derive(Clone, Debug)]
pub enum CpuSample {
    /// Per CPU: when it was read and its idle time so far (µs).
    Idle(Vec<(Instant, u64)>),
    /// Busy and total ticks.
    ProcStat { busy: u64, total: u64 },
}

/// What a window cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuBusy {
    /// Busy CPU time summed over the CPUs, ns.
    pub busy_ns: f64,
    /// Wall time summed over the CPUs, ns.
    pub total_ns: f64,
    /// The smallest step the source can show, ns.
    pub resolution_ns: f64,
}

impl CpuBusy {
    /// Whether the busy time is large enough against the source's resolution to report.
    pub fn resolved(&self) -> bool {
        self.busy_ns >= MIN_RESOLUTION_STEPS * self.resolution_ns
    }
}

impl CpuClock {
    /// cpuidle residency when every CPU has it and can be visited, else /proc/stat.
    pub fn detect() -> CpuClock {
        match idle_cpus(Path::new("/sys/devices/system/cpu")) {
            Ok(cpus) => {
                let clock = CpuClock::Idle(cpus);
                if clock.sample().is_ok() {
                    return clock;
                }
            }
            Err(e) => eprintln!("bench: cpuidle residency not usable ({e:#}); using /proc/stat"),
        }
        CpuClock::ProcStat {
            ticks_per_sec: clock_ticks(),
        }
    }

    /// For the report: which source, and what it includes.
    pub fn describe(&self) -> String {
        match self {
            CpuClock::Idle(cpus) => format!(
                "cpuidle residency of {} CPUs (µs; busy = wall - idle, each CPU read from a \
                 thread running on it)",
                cpus.len()
            ),
            CpuClock::ProcStat { ticks_per_sec } => format!(
                "/proc/stat user+nice+system+irq+softirq ({:.0} ms ticks)",
                1e3 / ticks_per_sec
            ),
        }
    }

    pub fn resolution_ns(&self) -> f64 {
        match self {
            CpuClock::Idle(_) => 1e3,
            CpuClock::ProcStat { ticks_per_sec } => 1e9 / ticks_per_sec,
        }
    }

    pub fn sample(&self) -> anyhow::Result<CpuSample> {
        match self {
            CpuClock::Idle(cpus) => sample_idle(cpus).map(CpuSample::Idle),
            CpuClock::ProcStat { .. } => {
                let (busy, total) = proc_stat()?;
                Ok(CpuSample::ProcStat { busy, total })
            }
        }
    }

    /// The busy time between two readings (`a` earlier).
    pub fn between(&self, a: &CpuSample, b: &CpuSample) -> anyhow::Result<CpuBusy> {
        let resolution_ns = self.resolution_ns();
        match (self, a, b) {
            (CpuClock::Idle(_), CpuSample::Idle(a), CpuSample::Idle(b)) if a.len() == b.len() => {
                let (mut busy_ns, mut total_ns) = (0.0, 0.0);
                for ((t0, idle0), (t1, idle1)) in a.iter().zip(b) {
                    let wall = t1.saturating_duration_since(*t0).as_nanos() as f64;
                    let idle = idle1.saturating_sub(*idle0) as f64 * 1e3;
                    busy_ns += (wall - idle).max(0.0);
                    total_ns += wall;
                }
                Ok(CpuBusy {
                    busy_ns,
                    total_ns,
                    resolution_ns,
                })
            }
            (
                CpuClock::ProcStat { .. },
                CpuSample::ProcStat {
                    busy: b0,
                    total: t0,
                },
                CpuSample::ProcStat {
                    busy: b1,
                    total: t1,
                },
            ) => Ok(CpuBusy {
                busy_ns: b1.saturating_sub(*b0) as f64 * resolution_ns,
                total_ns: t1.saturating_sub(*t0) as f64 * resolution_ns,
                resolution_ns,
            }),
            _ => bail!("CPU samples of different sources"),
        }
    }
}

/// Every CPU directory with cpuidle states under `root` (`/sys/devices/system/cpu`).
fn idle_cpus(root: &Path) -> anyhow::Result<Vec<IdleCpu>> {
    let mut cpus = Vec::new();
    let entries = fs::read_dir(root).with_context(|| format!("reading {}", root.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(cpu) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let idle_dir = entry.path().join("cpuidle");
        let mut state_times: Vec<PathBuf> = fs::read_dir(&idle_dir)
            .with_context(|| format!("cpu{cpu} has no cpuidle states"))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("state"))
            .map(|e| e.path().join("time"))
            .collect();
        state_times.sort();
        if state_times.is_empty() {
            bail!("cpu{cpu} has no cpuidle states");
        }
        cpus.push(IdleCpu { cpu, state_times });
    }
    if cpus.is_empty() {
        bail!("no CPU under {}", root.display());
    }
    cpus.sort_by_key(|c| c.cpu);
    Ok(cpus)
}

/// Reads each CPU's idle counters from a thread running on that CPU (so none of them is in an
/// idle period the counters do not show yet). A thread of its own: the caller's affinity is
/// left alone.
fn sample_idle(cpus: &[IdleCpu]) -> anyhow::Result<Vec<(Instant, u64)>> {
    let cpus = cpus.to_vec();
    std::thread::spawn(move || {
        cpus.iter()
            .map(|c| {
                pin_current_thread(c.cpu)?;
                let mut idle_us = 0u64;
                for path in &c.state_times {
                    let text = fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    idle_us += text
                        .trim()
                        .parse::<u64>()
                        .with_context(|| format!("{}: {text:?}", path.display()))?;
                }
                Ok((Instant::now(), idle_us))
            })
            .collect()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the CPU sampling thread panicked"))?
}

fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data, valid when zeroed; CPU_SET writes inside it (bounded by
    // CPU_SETSIZE, checked first); sched_setaffinity(0, ...) reads it for the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(anyhow::anyhow!("CPU {cpu} is beyond CPU_SETSIZE"));
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "cannot run on CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Busy (user+nice+system+irq+softirq) and total ticks from the first line of /proc/stat.
fn proc_stat() -> anyhow::Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_proc_stat(&text)
}

fn parse_proc_stat(text: &str) -> anyhow::Result<(u64, u64)> {
    let line = text.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if f.len() < 8 {
        bail!("unexpected /proc/stat line {line:?}");
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    let busy = f[0] + f[1] + f[2] + f[5] + f[6];
    let total = f[..8].iter().sum();
    Ok((busy, total))
}

/// Clock ticks per second of /proc/stat (USER_HZ).
pub fn clock_ticks() -> f64 {
    crate::cmd(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn proc_stat_line_busy_and_total() {
        let text = "cpu  4366 1 1831 40693 228 7 18 15 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            parse_proc_stat(text).unwrap(),
            (
                4366 + 1 + 1831 + 7 + 18,
                4366 + 1 + 1831 + 40693 + 228 + 7 + 18 + 15
            )
        );
        assert!(parse_proc_stat("cpu 1 2 3\n").is_err());
    }

    #[test]
    fn proc_stat_window_without_a_tick_is_unresolved() {
        let clock = CpuClock::ProcStat {
            ticks_per_sec: 100.0,
        };
        let a = CpuSample::ProcStat {
            busy: 500,
            total: 9000,
        };
        let same = clock.between(&a, &a.clone()).unwrap();
        assert_eq!(same.busy_ns, 0.0);
        assert!(!same.resolved());
        let b = CpuSample::ProcStat {
            busy: 530,
            total: 9200,
        };
        let w = clock.between(&a, &b).unwrap();
        assert_eq!(w.busy_ns, 30.0 * 1e7);
        assert_eq!(w.total_ns, 200.0 * 1e7);
        assert!(w.resolved());
    }

    #[test]
    fn idle_window_is_wall_minus_idle_per_cpu() {
        let clock = CpuClock::Idle(vec![]);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(100);
        // CPU 0 idle 60 ms of 100, CPU 1 idle 100 of 100 (and a counter that claims more
        // idle than wall time counts as 0 busy, not negative).
        let a = CpuSample::Idle(vec![(t0, 1_000), (t0, 5_000)]);
        let b = CpuSample::Idle(vec![(t1, 61_000), (t1, 106_000)]);
        let w = clock.between(&a, &b).unwrap();
        assert_eq!(w.busy_ns, 40e6);
        assert_eq!(w.total_ns, 200e6);
        assert!(w.resolved());
    }

    /// On the real machine: a thread spinning for 200 ms shows up as about 200 ms of busy
    /// time (other work on the machine can only add to it).
    #[test]
    fn this_machine_sees_a_spinning_thread() {
        let clock = CpuClock::detect();
        let a = clock.sample().unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            std::hint::spin_loop();
        }
        let b = clock.sample().unwrap();
        let w = clock.between(&a, &b).unwrap();
        assert!(
            w.busy_ns >= 150e6 && w.busy_ns <= w.total_ns,
            "{} busy {w:?}",
            clock.describe()
        );
    }
}
