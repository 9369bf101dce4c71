//! Child processes of the benchmark, each bounded in time and killed if it outlives its
//! owner (error, panic or Ctrl-C), plus small helpers for commands in a namespace.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;

/// `ip netns exec NS PROG`: a command run inside a namespace.
pub fn in_ns(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

/// Run a command with `input` on its stdin; its stdout on success.
pub fn cmd_stdin(c: &mut Command, input: &str) -> anyhow::Result<String> {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {c:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to {c:?}"))?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Send a signal by name (`INT`, `TERM`, `KILL`) to one process we started.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Sleep in small steps; fails as soon as Ctrl-C was pressed.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

pub fn check_interrupt() -> anyhow::Result<()> {
    if crate::interrupted() {
        bail!("interrupted (Ctrl-C)");
    }
    Ok(())
}

/// Wait for a file to appear (a server's `--ready-file`).
pub fn wait_file(path: &Path, limit: Duration, what: &mut Proc) -> anyhow::Result<()> {
    let end = Instant::now() + limit;
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Some(status) = what.try_wait()? {
            bail!(
                "{} exited ({status}) before it was ready: {}",
                what.name,
                what.stderr_tail()
            );
        }
        if Instant::now() >= end {
            bail!("{} not ready after {limit:?}", what.name);
        }
        check_interrupt()?;
        thread::sleep(Duration::from_millis(10));
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A child whose stdout and stderr go to files in the scratch directory (nothing can block
/// on a full pipe). Killed when dropped if it is still running.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// What a finished child left.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The one JSON object a loadgen run prints last on stdout.
    pub fn json(&self, name: &str) -> anyhow::Result<Value> {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .with_context(|| {
                format!(
                    "{name} printed no JSON ({}); stderr: {}",
                    self.status,
                    tail(&self.stderr)
                )
            })?;
        serde_json::from_str(line).with_context(|| format!("{name}: bad JSON {line:?}"))
    }
}

impl Proc {
    pub fn spawn(name: &str, mut c: Command, scratch: &Path) -> anyhow::Result<Self> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = scratch.join(format!("{n:05}-{name}"));
        let stdout = base.with_extension("out");
        let stderr = base.with_extension("err");
        let child = c
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("starting {name}: {c:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            status: None,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let Some(child) = self.child.as_mut() else {
            bail!("{}: no process", self.name)
        };
        if let Some(s) = child.try_wait()? {
            self.status = Some(s);
            self.child = None;
            return Ok(Some(s));
        }
        Ok(None)
    }

    /// Wait up to `limit` for the process to exit by itself.
    pub fn wait_for(&mut self, limit: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            check_interrupt()?;
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait up to `limit` for a natural exit, then SIGTERM (loadgen prints its JSON on it),
    /// then SIGKILL.
    pub fn finish(mut self, limit: Duration) -> anyhow::Result<Finished> {
        if self.wait_for(limit)?.is_none() {
            self.stop_now();
        }
        let status = self.status.context("process status")?;
        Ok(Finished {
            status,
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
        })
    }

    /// SIGTERM, up to 5 s, then SIGKILL. Never fails (used from Drop too).
    pub fn stop_now(&mut self) {
        let Some(pid) = self.pid() else { return };
        signal(pid, "TERM");
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(Some(_)))) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.status = child.wait().ok();
        }
    }

    pub fn stderr_tail(&self) -> String {
        tail(&fs::read_to_string(&self.stderr).unwrap_or_default())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop_now();
        }
    }
}

/// The last few lines of a log, on one line.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    let t = lines[start..].join(" | ");
    if t.is_empty() {
        "(nothing)".to_owned()
    } else {
        t
    }
}
