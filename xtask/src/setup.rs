//! Installs what the project needs on a fresh machine, and nothing that is already there.
//!
//! Everything here is idempotent: each step checks first and only acts when something is
//! missing, so `cargo xtask run|test|bench` can call it every time.

use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{cmd, cmd_ok};

/// bpf-linker 0.10.x loads rustc's own libLLVM at run time; 0.11+ wants LLVM 23, which the
/// pinned nightly does not ship (see README, "Toolchain").
const BPF_LINKER_VERSION: &str = "0.10.4";

/// Debian packages used by the lab demo, the tests and the benchmarks.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iptables",
    "nftables",
    "tcpdump",
    "iperf3",
    "conntrack",
    "ethtool",
    "bpftool",
    "socat",
    "traceroute",
    // perf: the bench samples where the stream's CPU time goes.
    "linux-perf",
    // A real Docker daemon for the `--docker` tests and `xtask run --docker`: the tests start
    // their own dockerd inside a test namespace, and build their image from busybox.
    "docker.io",
    "containerd",
    "runc",
    "busybox-static",
];

/// Where Debian's invoke-rc.d asks whether a package may start its service.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn ensure_all() -> anyhow::Result<()> {
    ensure_toolchains()?;
    ensure_bpf_linker()?;
    ensure_debian_packages()?;
    Ok(())
}

fn ensure_toolchains() -> anyhow::Result<()> {
    if !cmd_ok(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        bail!(
            "the nightly toolchain is missing (the eBPF crate needs it): install it with \
             `rustup toolchain install nightly --profile minimal`"
        );
    }
    ensure_components(Some("nightly"), &["rust-src", "clippy"])?;
    // The host toolchain (the one active here) lints and formats in `cargo xtask test`.
    ensure_components(None, &["clippy", "rustfmt"])
}

/// Add the rustup components of `toolchain` (None: the active one) that are missing.
fn ensure_components(toolchain: Option<&str>, wanted: &[&str]) -> anyhow::Result<()> {
    let on = |c: &mut Command| {
        if let Some(t) = toolchain {
            c.args(["--toolchain", t]);
        }
    };
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed"]);
    on(&mut list);
    let installed = cmd(&mut list)?;
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !installed.lines().any(|l| l.starts_with(w)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "setup: adding {} to the {} toolchain",
        missing.join(", "),
        toolchain.unwrap_or("active")
    );
    let mut add = Command::new("rustup");
    add.args(["component", "add"]).args(&missing);
    on(&mut add);
    run(&mut add)
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    if let Some(out) = current {
        if String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
    }
    eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (takes about 2 minutes)");
    run(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
}

fn ensure_debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !cmd(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "missing Debian packages {missing:?}; run as root (or `sudo apt-get install -y {}`)",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    // docker.io would start the machine's own Docker daemon where an init system runs, and
    // that daemon writes its iptables rules into the machine's firewall: no service starts
    // during the install (policy-rc.d answering 101, "action forbidden"). The tests start a
    // daemon of their own, inside a namespace.
    let guard = ServiceStartGuard::install()?;
    let result = run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    drop(guard);
    result
}

/// A policy-rc.d that forbids starting services, removed on drop; nothing when the machine
/// has its own.
struct ServiceStartGuard(bool);

impl ServiceStartGuard {
    fn install() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        if std::path::Path::new(POLICY_RC_D).exists() {
            return Ok(Self(false));
        }
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# bpfnat setup: no service starts during install\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(Self(true))
    }
}

impl Drop for ServiceStartGuard {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

fn nix_is_root() -> bool {
    cmd(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

fn run(c: &mut Command) -> anyhow::Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}
