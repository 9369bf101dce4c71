//! Project tasks: `cargo xtask setup|build|run|test|bench`.

mod bench;
mod demo;
mod doc_checks;
mod docker_demo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: rust-src for nightly, bpf-linker, Debian tools.
    Setup,
    /// Build the loader (and, through its build.rs, the eBPF datapath) in release mode.
    Build,
    /// Build, bring the lab up, start the datapath in it and show it working, until Ctrl-C.
    /// With `--docker`, with a real Docker daemon in the lab that the datapath follows.
    Run {
        /// Stop by itself after this many seconds (for scripts); default: until Ctrl-C.
        #[arg(long)]
        duration: Option<u64>,
        /// Start a Docker daemon (Debian's docker.io, from `cargo xtask setup`) in the lab's
        /// host namespace and run `bpfnat up --docker-host` on it: a network created at run
        /// time is served, `docker run -p` answers from outside with the client's own address,
        /// containers reach out masqueraded, and not one iptables or nftables rule exists.
        #[arg(long)]
        docker: bool,
    },
    /// Run every test: fmt and clippy (host and eBPF crates), unit, crafted packets through
    /// the kernel, end to end in namespaces, then `cargo xtask run` and `bench --quick` (the
    /// lints and the two smoke tests only without extra arguments).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Compare plain routing, iptables, nftables (+ flowtable) and bpfnat on one topology.
    Bench(bench::BenchArgs),
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Setup => setup::ensure_all(),
        Task::Build => {
            setup::ensure_all()?;
            build_release().map(|_| ())
        }
        Task::Run { duration, docker } => {
            require_root("cargo xtask run")?;
            setup::ensure_all()?;
            let bin = build_release()?;
            let duration = duration.map(std::time::Duration::from_secs);
            if docker {
                docker_demo::run(&bin, duration)
            } else {
                demo::run(&bin, duration)
            }
        }
        Task::Test { args } => {
            require_root("cargo xtask test")?;
            setup::ensure_all()?;
            if args.is_empty() {
                lint()?;
            }
            test(&args)?;
            if args.is_empty() {
                // The main job, as a user runs it, bounded in time: it must work and leave
                // nothing behind.
                println!("\n== smoke test of `cargo xtask run` (10 s)");
                let before = leftovers()?;
                demo::run(&build_release()?, Some(std::time::Duration::from_secs(10)))?;
                check_no_new_leftovers(&before, "cargo xtask run")?;

                println!("\n== smoke test of `cargo xtask bench --quick`");
                let before = leftovers()?;
                bench::run(&bench::BenchArgs::quick())?;
                check_no_new_leftovers(&before, "cargo xtask bench --quick")?;
            }
            Ok(())
        }
        Task::Bench(args) => {
            require_root("cargo xtask bench")?;
            setup::ensure_all()?;
            bench::run(&args)
        }
    }
}

/// Set once Ctrl-C was pressed. The handler is installed on first use (ctrlc allows only one
/// per process, and `test` runs both the demo and the benchmark).
pub fn interrupted() -> bool {
    stop_flag().load(Ordering::SeqCst)
}

pub fn stop_flag() -> &'static AtomicBool {
    static FLAG: OnceLock<&'static AtomicBool> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
            eprintln!("xtask: cannot install the Ctrl-C handler: {e}");
        }
        flag
    })
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` if set, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn build_release() -> anyhow::Result<PathBuf> {
    let status = Command::new("cargo")
        .args(["build", "--release", "--package", "bpfnat"])
        .current_dir(workspace_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(target_dir().join("release/bpfnat"))
}

/// What this project may leave behind on a machine: namespaces, loaded NAT programs, pins.
#[derive(Debug, PartialEq, Eq)]
struct Leftovers {
    namespaces: Vec<String>,
    programs: Vec<String>,
    pins: bool,
}

fn leftovers() -> anyhow::Result<Leftovers> {
    let progs = cmd(Command::new("bpftool").args(["prog", "show"])).unwrap_or_default();
    let programs = progs
        .lines()
        .filter(|l| {
            ["nat_egress", "nat_ingress", "port_ingress"]
                .iter()
                .any(|p| l.contains(&format!("name {p} ")) || l.ends_with(&format!("name {p}")))
        })
        .filter_map(|l| l.split(':').next().map(str::to_owned))
        .collect();
    Ok(Leftovers {
        namespaces: demo::leftover_namespaces()?,
        programs,
        pins: Path::new("/sys/fs/bpf/bpfnat").exists(),
    })
}

/// Fail if anything the project makes exists now that did not exist in `before` (a lab or a
/// daemon the user started themselves is not the tests' doing).
fn check_no_new_leftovers(before: &Leftovers, what: &str) -> anyhow::Result<()> {
    let now = leftovers()?;
    let namespaces: Vec<_> = now
        .namespaces
        .iter()
        .filter(|n| !before.namespaces.contains(n))
        .collect();
    let programs: Vec<_> = now
        .programs
        .iter()
        .filter(|p| !before.programs.contains(p))
        .collect();
    if !namespaces.is_empty() || !programs.is_empty() || (now.pins && !before.pins) {
        bail!("{what} left things behind: namespaces {namespaces:?}, program ids {programs:?}, pins {}", now.pins);
    }
    println!("{what}: no namespace, program or pin left behind");
    Ok(())
}

/// The lint gates: formatting, and clippy with warnings as errors on the host crates and on
/// the eBPF crate (built for its own target with nightly, as the loader's build does). The
/// lints themselves are the workspace's (`[workspace.lints]` in Cargo.toml).
fn lint() -> anyhow::Result<()> {
    let root = workspace_root();
    let steps: [(&str, Vec<&str>); 3] = [
        ("cargo fmt --check", vec!["fmt", "--all", "--", "--check"]),
        (
            "clippy (host crates)",
            vec![
                "clippy",
                "--workspace",
                "--exclude",
                "datapath-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        (
            "clippy (eBPF crate, bpfel)",
            vec![
                "+nightly",
                "clippy",
                "--package",
                "datapath-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ],
        ),
    ];
    for (what, args) in steps {
        println!("== {what}");
        let status = Command::new("cargo")
            .args(&args)
            .current_dir(&root)
            .status()
            .with_context(|| format!("running {what}"))?;
        if !status.success() {
            bail!("{what} failed (cargo {})", args.join(" "));
        }
    }
    Ok(())
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    let root = workspace_root();
    let before = leftovers()?;
    // The eBPF crate is not a default member (it only builds for the BPF target); the
    // loader's build.rs builds it, and its tests run the object in the kernel.
    let status = Command::new("cargo")
        .args(["test", "--workspace", "--exclude", "datapath-ebpf"])
        .args(with_ignored_tests(extra))
        .current_dir(&root)
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("tests failed");
    }
    check_no_new_leftovers(&before, "the tests")
}

/// `extra` with `--include-ignored` for the test binaries: the tests that need root are
/// marked `#[ignore = "needs root: ..."]` so that a plain `cargo test` without root shows them
/// as ignored instead of passing them empty; this command runs as root and runs them all.
fn with_ignored_tests(extra: &[String]) -> Vec<String> {
    let mut args = extra.to_vec();
    match args.iter().position(|a| a == "--") {
        Some(i) => args.insert(i + 1, "--include-ignored".to_owned()),
        None => args.extend(["--".to_owned(), "--include-ignored".to_owned()]),
    }
    args
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if cmd(Command::new("id").arg("-u"))?.trim() != "0" {
        bail!(
            "{what} needs root: it creates network namespaces and loads BPF programs (try sudo -E)"
        );
    }
    Ok(())
}

/// Run a command and return its stdout; fail on a non-zero exit.
pub fn cmd(c: &mut Command) -> anyhow::Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a command runs and exits 0 (its output is discarded).
pub fn cmd_ok(c: &mut Command) -> bool {
    c.output().is_ok_and(|o| o.status.success())
}

#[cfg(test)]
mod tests {
    use super::with_ignored_tests;

    #[test]
    fn root_only_tests_are_included_whatever_the_extra_arguments() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(with_ignored_tests(&[]), v(&["--", "--include-ignored"]));
        assert_eq!(
            with_ignored_tests(&v(&["e2e_nat"])),
            v(&["e2e_nat", "--", "--include-ignored"])
        );
        assert_eq!(
            with_ignored_tests(&v(&["-p", "bpfnat", "--", "--nocapture"])),
            v(&["-p", "bpfnat", "--", "--include-ignored", "--nocapture"])
        );
    }

    /// Every test `docs/security.md` names (`datapath/FILE::NAME`, `e2e/FILE::NAME`,
    /// `unit/PATH::NAME`) exists: a claim must not outlive the test that backs it.
    #[test]
    fn security_page_names_existing_tests() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let page = std::fs::read_to_string(root.join("docs/security.md")).expect("security.md");
        let mut named = 0;
        for cited in page.split('`').skip(1).step_by(2) {
            let Some((kind, path)) = cited.split_once('/') else {
                continue;
            };
            let Some((module, name)) = path.rsplit_once("::") else {
                continue;
            };
            let file = match kind {
                "datapath" | "e2e" => root.join(format!("loader/tests/{kind}/{module}.rs")),
                "unit" => {
                    // `a::b::tests::name` is a test in loader/src/a/b.rs.
                    let module = module.trim_end_matches("::tests").replace("::", "/");
                    root.join(format!("loader/src/{module}.rs"))
                }
                _ => continue,
            };
            let source = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{cited}: {}: {e}", file.display()));
            assert!(
                source.contains(&format!("fn {name}()")),
                "{cited}: no test {name} in {}",
                file.display()
            );
            named += 1;
        }
        assert!(named >= 30, "only {named} tests named");
    }
}
