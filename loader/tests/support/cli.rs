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
