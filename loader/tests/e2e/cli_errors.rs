//! Bad input gets one clear line on stderr and a non-zero exit, never a panic, and nothing is
//! left attached.

use crate::support::require_root;

use std::{net::Ipv4Addr, process::Command};

use crate::support::e2e::{tc_programs, Daemon, Lab};
use bpfnat::{host::lab::LabSpec, host::netns};

fn bpfnat(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bpfnat"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run bpfnat");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], expected: &str) {
    let (code, stderr) = bpfnat(args);
    assert_ne!(code, 0, "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("bpfnat: error: "),
        "{args:?}: {stderr}"
    );
    assert!(
        lines[0].contains(expected),
        "{args:?}: expected {expected:?} in {stderr}"
    );
}

/// A scratch namespace removed on drop.
struct ScratchNs(&'static str);

impl ScratchNs {
    fn new(name: &'static str) -> Self {
        netns::create(name).expect("create netns");
        Self(name)
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = netns::delete(self.0);
    }
}

#[test]
fn bad_arguments() {
    let up = ["up", "--uplink", "eth0", "--bridge", "docker1"];
    let with =
        |extra: &[&'static str]| -> Vec<&'static str> { up.iter().chain(extra).copied().collect() };
    assert_one_line_error(
        &with(&["--subnet", "172.18.0.0/33"]),
        "bad CIDR \"172.18.0.0/33\"",
    );
    assert_one_line_error(&with(&["--subnet", "172.18.0/24"]), "bad CIDR");
    assert_one_line_error(
        &with(&["--subnet", "172.18.0.0"]),
        "expected ADDRESS/PREFIX",
    );
    assert_one_line_error(
        &with(&["--port-range", "2000-1000"]),
        "bad port range \"2000-1000\"",
    );
    assert_one_line_error(&with(&["--port-range", "0-100"]), "bad port range");
    assert_one_line_error(&with(&["--port-range", "70000"]), "bad port range");
    assert_one_line_error(&with(&["--sweep-interval", "0"]), "--sweep-interval");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn not_root() {
    let _slot = require_root();
    // Drop to nobody for this one command.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_bpfnat"),
        ])
        .args(["up", "--uplink", "eth0", "--bridge", "docker1"])
        .env("RUST_LOG", "off")
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("bpfnat: error: bpfnat needs root"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn unknown_names_and_unusable_interfaces() {
    let _slot = require_root();
    let ns = ScratchNs::new("bnt-cli");
    assert_one_line_error(
        &[
            "--netns",
            "bnt-no-such-ns",
            "up",
            "--uplink",
            "x",
            "--bridge",
            "y",
        ],
        "bnt-no-such-ns",
    );
    assert_one_line_error(
        &["--netns", ns.0, "up", "--uplink", "nope0", "--bridge", "lo"],
        "unknown interface \"nope0\"",
    );
    assert_one_line_error(
        &["--netns", ns.0, "up", "--uplink", "lo", "--bridge", "nope1"],
        "unknown interface \"nope1\"",
    );
    // A fresh namespace's lo is down and has no address yet.
    assert_one_line_error(
        &["--netns", ns.0, "up", "--uplink", "lo", "--bridge", "lo"],
        "uplink \"lo\" has no IPv4 address",
    );
    netns::with_netlink(ns.0, |h| async move { netns::set_link_up(&h, "lo").await }).unwrap();
    // Now lo has 127.0.0.1/8: the "bridge" subnet would contain the uplink address.
    assert_one_line_error(
        &["--netns", ns.0, "up", "--uplink", "lo", "--bridge", "lo"],
        "inside internal subnet 127.0.0.0/8",
    );
    assert_eq!(
        tc_programs(ns.0, "lo"),
        "",
        "nothing attached after a failed start"
    );
}

fn mini_lab(prefix: &str, third_octet: u8) -> LabSpec {
    crate::support::topo::test_lab(
        prefix,
        [10, 97, third_octet],
        1,
        Ipv4Addr::new(192, 0, 2, 10 + third_octet),
        Ipv4Addr::new(192, 0, 2, 100 + third_octet),
        Ipv4Addr::new(198, 51, 100, 90),
    )
}

/// bpffs missing: `up` mounts it. Run in a private mount namespace so the machine's own
/// mounts are never touched.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn mounts_bpffs_when_missing() {
    let _slot = require_root();
    let lab = Lab::up(mini_lab("bnt-fs", 1));
    let script = format!(
        "umount /sys/fs/bpf 2>/dev/null; \
         if [ \"$(stat -f -c %T /sys/fs/bpf)\" = bpf_fs ]; then echo still-mounted; exit 3; fi; \
         timeout 20 {bin} --netns {ns} up --uplink up0 --bridge br0 & pid=$!; \
         sleep 2; stat -f -c %T /sys/fs/bpf; kill -INT $pid; wait $pid",
        bin = env!("CARGO_BIN_EXE_bpfnat"),
        ns = lab.spec.host_netns,
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("mounted bpffs at /sys/fs/bpf"), "{stderr}");
    assert!(
        stdout.contains("ready:") && stdout.contains("bpf_fs") && stdout.contains("stopped"),
        "{stdout}"
    );
}

/// Start and stop twice on the same uplink: attached while running, nothing left after.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn restart_on_same_uplink_leaves_nothing_behind() {
    let _slot = require_root();
    let lab = Lab::up(mini_lab("bnt-rs", 2));
    for _ in 0..2 {
        let d = Daemon::start(
            &lab.spec.host_netns,
            &["--uplink", "up0", "--bridge", "br0"],
        );
        assert_eq!(
            tc_programs(&lab.spec.host_netns, "up0"),
            "tcx/egress nat_egress\ntcx/ingress nat_ingress"
        );
        let (status, _) = d.stop();
        assert!(status.success());
        assert_eq!(tc_programs(&lab.spec.host_netns, "up0"), "");
    }
}
