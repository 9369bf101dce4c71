//! A real Docker daemon (Debian's docker.io) of the test's own, in the test's network namespace,
//! so that `bpfnat up --docker-host` meets what it is written for: networks, containers and
//! restarts done by Docker itself, not imitated. No registry is reachable: the one image is
//! imported from busybox-static. All it makes lives under one /tmp directory, removed on drop.
#![allow(
    dead_code,
    reason = "each test binary includes the shared support and uses a part of it"
)]

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    mount::{umount2, MntFlags},
    sched::{setns, CloneFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::support::e2e::ns_exec;

/// The settings of docs/docker.md's daemon.json (live-restore is per test): no iptables or
/// ip6tables rules, no docker-proxy.
pub const DAEMON_JSON: &str =
    r#""iptables": false, "ip6tables": false, "ip-masq": false, "userland-proxy": false"#;

/// A Docker daemon of the test's own, inside network namespace `netns`; stopped and removed
/// (containers, networks, its state directory) on drop, even when the test panics.
pub struct Dockerd {
    netns: String,
    dir: PathBuf,
    child: Option<Child>,
    live_restore: bool,
}

impl Dockerd {
    /// The image name every test runs.
    pub const IMAGE: &'static str = "bnt-busybox:1";

    /// Start dockerd in `netns` (which must exist), wait until it answers, import the image.
    /// Panics with a clear message if dockerd is not installed ("run `cargo xtask setup`").
    pub fn start(netns: &str) -> Self {
        Self::start_with(netns, false)
    }

    /// Same, with `--live-restore` (containers keep running while dockerd restarts).
    pub fn start_live_restore(netns: &str) -> Self {
        Self::start_with(netns, true)
    }

    fn start_with(netns: &str, live_restore: bool) -> Self {
        for tool in ["dockerd", "containerd", "runc", "docker", "busybox"] {
            program(tool);
        }
        assert!(
            Path::new("/run/netns").join(netns).exists(),
            "network namespace {netns} does not exist: create it before starting Docker in it"
        );
        // Built before dockerd is up: a panic from here on drops it and so cleans up. The
        // directory is short, so that socket paths under it stay far below 108 bytes.
        let mut dockerd = Self {
            netns: netns.to_owned(),
            dir: PathBuf::from(format!("/tmp/bnt-docker-{netns}")),
            child: None,
            live_restore,
        };
        dockerd.clean(); // Whatever a killed test run may have left.
        let dir = &dockerd.dir;
        fs::create_dir_all(dir).expect("create the Docker state directory");
        // A config file of its own: /etc/docker/daemon.json does not apply, and dockerd 20.10
        // writes its trust key here rather than to /etc/docker. The settings are those
        // docs/docker.md gives a Docker host (an xtask test checks they match).
        let key = dir.join("key.json");
        let config = format!(
            "{{\n  {DAEMON_JSON},\n  \"live-restore\": {live_restore},\n  \
             \"deprecated-key-path\": \"{}\"\n}}\n",
            key.display()
        );
        fs::write(dir.join("daemon.json"), config).expect("write daemon.json");
        dockerd.spawn();
        dockerd.import_image();
        dockerd
    }

    /// `unix:///tmp/.../docker.sock`: what `bpfnat up --docker-host` gets.
    pub fn host_url(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// `docker -H ... ARGS`; returns stdout trimmed on success, panics with stderr otherwise.
    pub fn docker(&self, args: &[&str]) -> String {
        self.try_docker(args)
            .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
    }

    /// Same but returns the stderr of a failure instead of panicking. Bounded (60 s), so that a
    /// hung daemon fails the test rather than hanging it.
    pub fn try_docker(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("timeout")
            .args(["-k", "5", "60", "docker", "-H", &self.host_url()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run docker: {e}"))?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        match out.status.code() {
            Some(0) => Ok(text(&out.stdout)),
            Some(124) => Err("timed out after 60 s".to_owned()),
            _ => Err(text(&out.stderr)),
        }
    }

    /// Stop dockerd (SIGTERM, bounded wait) without removing anything, then start it again on
    /// the same state directory and wait until it answers. Live-restore keeps containers up.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The container's IPv4 address on network `net` (docker inspect with a Go template).
    pub fn container_ip(&self, container: &str, net: &str) -> Ipv4Addr {
        let template = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
        let ip = self.docker(&["inspect", "-f", &template, container]);
        ip.parse()
            .unwrap_or_else(|_| panic!("container {container} has no IPv4 on {net}: {ip:?}"))
    }

    /// Path of the container's network namespace (docker inspect .NetworkSettings.SandboxKey),
    /// so a test can run code inside the container's namespace with setns.
    pub fn sandbox(&self, container: &str) -> PathBuf {
        let template = "{{.NetworkSettings.SandboxKey}}";
        let key = self.docker(&["inspect", "-f", template, container]);
        assert!(!key.is_empty(), "container {container} has no sandbox");
        PathBuf::from(key)
    }

    /// Start dockerd and wait (30 s at most) until it answers.
    fn spawn(&mut self) {
        let log_path = self.dir.join("dockerd.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open dockerd.log");
        let (d, netns) = (self.dir.display(), &self.netns);
        // nsenter, not `ip netns exec`: dockerd needs this mount namespace (the cgroup
        // mounts), only the network namespace is the test's.
        let args = format!(
            "--net=/run/netns/{netns} {} --bridge=none --storage-driver=vfs \
             --config-file={d}/daemon.json --data-root={d}/data \
             --exec-root={d}/exec --pidfile={d}/dockerd.pid --host=unix://{d}/docker.sock",
            program("dockerd").display()
        );
        let mut child = Command::new(program("nsenter"))
            .args(args.split_whitespace())
            .env("PATH", search_path()) // Where dockerd finds containerd and runc.
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup dockerd.log"))
            .stderr(log)
            .spawn()
            .expect("spawn nsenter dockerd");
        let mut exited = None;
        let up = wait_until(30, || {
            exited = child.try_wait().ok().flatten();
            exited.is_some() || self.try_docker(&["version"]).is_ok()
        });
        self.child = Some(child);
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        assert!(exited.is_none(), "dockerd exited ({exited:?}):\n{tail}");
        assert!(up, "dockerd did not answer within 30 s:\n{tail}");
    }

    /// `docker import` of a root filesystem with busybox-static and its applets.
    fn import_image(&self) {
        let bin = self.dir.join("rootfs/bin");
        fs::create_dir_all(&bin).expect("create rootfs");
        fs::copy(program("busybox"), bin.join("busybox")).expect("copy busybox");
        for applet in "sh nc httpd sleep cat echo ip ifconfig ping true".split(' ') {
            symlink("busybox", bin.join(applet)).expect("applet symlink");
        }
        let tarred = Command::new("tar")
            .current_dir(self.dir.join("rootfs"))
            .args(["-cf", "../rootfs.tar", "."])
            .status();
        assert!(tarred.is_ok_and(|s| s.success()), "tar of the image failed");
        let tar = self.dir.join("rootfs.tar");
        self.docker(&["import", &tar.to_string_lossy(), Self::IMAGE]);
    }

    /// SIGTERM dockerd, wait 20 s at most, then SIGKILL.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            if !wait_until(20, || !matches!(child.try_wait(), Ok(None))) {
                eprintln!("dockerd ignored SIGTERM for 20 s: killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Remove containers and networks while dockerd runs (so it unmounts and deletes what it
    /// made), then stop it and remove whatever is left. Never panics: it runs in `drop`.
    fn clean(&mut self) {
        let ids = |args: &[&str]| self.try_docker(args).unwrap_or_default();
        let containers = ids(&["ps", "-aq"]);
        let networks = ids(&["network", "ls", "-q", "--filter", "type=custom"]);
        for (remove, ids) in [(["rm", "-f"], containers), (["network", "rm"], networks)] {
            let args: Vec<&str> = remove.into_iter().chain(ids.lines()).collect();
            if let Some(Err(e)) = (!ids.is_empty()).then(|| self.try_docker(&args)) {
                eprintln!("`docker {}` in {}: {e}", args.join(" "), self.netns);
            }
        }
        self.stop();
        purge(&self.dir);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Poll `done` for `secs` seconds at most; whether it came true.
fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    true
}

/// PATH, then the system directories (a PATH without the sbin ones is common).
fn search_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

/// Where `name` is installed (see [`search_path`]); panics if it is not.
fn program(name: &str) -> PathBuf {
    let path = search_path();
    let mut found = path.split(':').map(|dir| Path::new(dir).join(name));
    found.find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("`{name}` is not installed (docker.io, busybox-static): run `cargo xtask setup`")
    })
}

/// Stop what belongs to `dir` and remove it. Container processes get SIGKILL, as from
/// `docker rm -f` (found by cgroup: their dockerd and shim may be dead); dockerd, containerd
/// and the shims (their command line names `dir`) get SIGTERM, 10 s, SIGKILL. Then everything
/// mounted under `dir` is lazily unmounted and `dir` removed. Reports, never panics.
fn purge(dir: &Path) {
    let ids: Vec<String> = fs::read_dir(dir.join("data/containers"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    for pid in pids(|pid| {
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        ids.iter().any(|id| cgroup.contains(id.as_str()))
    }) {
        let _ = kill(pid, Signal::SIGKILL);
    }
    let d = format!("{}/", dir.display()); // With the slash: not a sibling's (x2 for x).
    let daemons = || {
        pids(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let argv0 = cmdline.split('\0').next().unwrap_or("");
            (argv0.ends_with("dockerd") || argv0.contains("containerd")) && cmdline.contains(&d)
        })
    };
    for (signal, secs) in [(Signal::SIGTERM, 10), (Signal::SIGKILL, 5)] {
        for pid in daemons() {
            let _ = kill(pid, signal);
        }
        if wait_until(secs, || daemons().is_empty()) {
            break;
        }
    }
    if let Some(pid) = daemons().first() {
        eprintln!("process {pid} of {d} survived SIGKILL");
    }
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut under: Vec<&Path> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1).map(Path::new))
        .filter(|m| m.starts_with(dir))
        .collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len())); // Deepest first.
    for m in under {
        if let Err(e) = umount2(m, MntFlags::MNT_DETACH) {
            eprintln!("umount {}: {e}", m.display());
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => eprintln!("rm -rf {d}: {e}"),
        _ => {}
    }
}

/// The processes for which `keep` (given the pid) is true.
fn pids(keep: impl Fn(i32) -> bool) -> Vec<Pid> {
    let procs = fs::read_dir("/proc").into_iter().flatten().flatten();
    let all = procs.filter_map(|e| e.file_name().to_str()?.parse().ok());
    all.filter(|&pid| keep(pid)).map(Pid::from_raw).collect()
}

/// Run `f` on a new thread inside the network namespace at `sandbox` (a container's, see
/// [`Dockerd::sandbox`]), like `spawn_in` does for named namespaces.
pub fn run_in_sandbox<T: Send + 'static>(
    sandbox: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let sandbox = sandbox.to_owned();
    thread::spawn(move || {
        let ns = fs::File::open(&sandbox)
            .unwrap_or_else(|e| panic!("open sandbox {}: {e}", sandbox.display()));
        setns(ns, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("enter sandbox {}: {e}", sandbox.display()));
        f()
    })
}

/// Assert that `ns` has no firewall rule at all: no `-A` line in any iptables table and no
/// nftables table. Docker runs with `--iptables=false` and bpfnat does its job without rules,
/// so any rule there was added by someone the test does not expect.
pub fn assert_no_firewall_rules(ns: &str) {
    let (ok, ipt) = ns_exec(ns, &["iptables-save"]);
    assert!(ok, "iptables-save failed in {ns}: the check cannot run");
    let rules = ipt.lines().any(|l| l.starts_with("-A"));
    assert!(!rules, "iptables rules in {ns}:\n{ipt}");
    let (ok, nft) = ns_exec(ns, &["nft", "list", "ruleset"]);
    assert!(ok, "nft list ruleset failed in {ns}: the check cannot run");
    let tables = nft.lines().any(|l| l.starts_with("table"));
    assert!(!tables, "nftables tables in {ns}:\n{nft}");
}
