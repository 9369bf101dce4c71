//! What every mode shares: the hard deadline, SIGINT/SIGTERM, ready files and
//! worker threads.

use std::{
    fs,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};

/// Set by SIGINT/SIGTERM: every loop winds down as if its deadline had come,
/// so a killed generator still prints its JSON.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the stop handler. No SA_RESTART, so a blocked `epoll_wait`
/// returns EINTR at once (loops also wake at least every 100 ms anyway,
/// because the signal may land on another thread).
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // sigaction is fully initialised before use.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Longest a loop blocks before re-checking its stop conditions.
pub const TICK: Duration = Duration::from_millis(100);

/// The hard cap on a whole run (`--duration`), fixed at start.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub start: Instant,
    pub end: Instant,
}

impl Deadline {
    pub fn new(duration: Duration) -> Self {
        let start = Instant::now();
        Deadline {
            start,
            end: start + duration,
        }
    }

    /// True once the cap is reached or a stop signal arrived.
    pub fn expired(&self) -> bool {
        stop_requested() || Instant::now() >= self.end
    }

    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    /// How long a wait may block: at most `cap`, never past the deadline.
    pub fn wait_for(&self, cap: Duration) -> Duration {
        self.remaining().min(cap)
    }

    /// The earlier of the deadline and `start + secs` (a mode's own
    /// measurement window).
    pub fn window_end(&self, from: Instant, secs: f64) -> Instant {
        (from + Duration::from_secs_f64(secs)).min(self.end)
    }
}

/// Creates `path` with `content` (a test waits for it instead of sleeping).
/// Written to a temporary name and renamed, so a reader never sees it half
/// written.
pub fn write_signal_file(path: &Path, content: &str) -> Result<()> {
    let tmp = path.with_extension("tmp-loadgen");
    fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Default worker threads: one per CPU, never more than there is work for.
pub fn default_threads(work_items: usize) -> usize {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    cpus.min(work_items).max(1)
}

/// Runs `work(i, input)` on one thread per input and collects the results
/// in order. A worker that panics is reported as an error instead of
/// tearing the process down without JSON.
pub fn run_workers<I, T, F>(inputs: Vec<I>, work: F) -> Result<Vec<T>>
where
    I: Send,
    T: Send,
    F: Fn(usize, I) -> Result<T> + Sync,
{
    // One worker runs on the calling thread: no idle parent blocked in
    // join(), and the scheduler sees one task, like a classic tool.
    if inputs.len() == 1 {
        return inputs.into_iter().map(|input| work(0, input)).collect();
    }
    thread::scope(|scope| {
        let mut handles = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.into_iter().enumerate() {
            let work = &work;
            let handle = thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn_scoped(scope, move || work(i, input))
                .context("spawning a worker thread")?;
            handles.push(handle);
        }
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("worker thread panicked"))?)
            .collect()
    })
}

/// Splits `total` items over `parts` as evenly as possible; part `i` gets
/// the returned count.
pub fn share(total: u64, parts: usize, i: usize) -> u64 {
    let parts = parts.max(1) as u64;
    total / parts + u64::from((i as u64) < total % parts)
}

/// Seconds as f64 from a Duration-ish pair, never negative.
pub fn secs_between(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64()
}
