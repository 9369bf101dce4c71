//! Running the `bpfnat` CLI from tests, and reading its JSON.
#![allow(
    dead_code,
    reason = "each test binary includes the shared support and uses a part of it"
)]

use std::process::Command;

use serde_json::Value;

/// Run the CLI: (exit code, stdout, stderr).
pub fn bpfnat(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bpfnat"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run bpfnat");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run the CLI, which must succeed; its stdout.
pub fn bpfnat_ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = bpfnat(args);
    assert_eq!(code, 0, "bpfnat {args:?} failed:\n{stderr}");
    stdout
}

/// `conntrack list --json` of the instance in `ns`, with extra filter arguments.
pub fn conntrack_json(ns: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--netns", ns, "conntrack", "list", "--json"];
    args.extend_from_slice(extra);
    match serde_json::from_str(&bpfnat_ok(&args)).expect("conntrack list --json is JSON") {
        Value::Array(v) => v,
        other => panic!("expected an array, got {other}"),
    }
}

/// `stats --json` of the instance in `ns`.
pub fn stats_json(ns: &str) -> Value {
    serde_json::from_str(&bpfnat_ok(&["--netns", ns, "stats", "--json"])).expect("stats JSON")
}

/// One counter of a `stats --json` document.
pub fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing in {stats}"))
}

/// One counter of the instance in `ns` (`stats --json`).
pub fn counter_in(ns: &str, name: &str) -> u64 {
    counter(&stats_json(ns), name)
}

/// `bpfnat --netns NS --json trace ARGS` running in the background, its filter in place once
/// `start` returns; `stop` ends it with SIGINT (as Ctrl-C would) and returns its events.
pub struct Tracer {
    child: std::process::Child,
}

impl Tracer {
    pub fn start(ns: &str, args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_bpfnat"))
            .args(["--netns", ns, "--json", "trace"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("bpfnat trace");
        // The filter is in place before the caller's traffic starts.
        std::thread::sleep(std::time::Duration::from_millis(800));
        Self { child }
    }

    /// Stop the trace (after half a second, so that the last events are read) and return its
    /// events, one JSON value each; it must exit successfully.
    pub fn stop(mut self) -> (Vec<Value>, String) {
        use std::io::Read as _;
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).expect("trace output");
        }
        assert!(self.child.wait().expect("trace exit").success(), "{out}");
        let events = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("event json"))
            .collect();
        (events, out)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // A failed test: do not leave the tracer (and its filter) running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
