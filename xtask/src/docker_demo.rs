//! `cargo xtask run --docker`: the lab with a real Docker daemon in its host namespace, and
//! `bpfnat up --docker-host` following it: a network made at run time is served, `docker run
//! -p` is reached from outside with the client's own address, containers reach out
//! masqueraded, a stopped container's port is closed, and there is not one firewall rule.
//!
//! No registry is reachable: the one image is imported from busybox-static. Everything Docker
//! makes lives under [`DIR`], removed on the way out (and, if a killed run left it, on the way
//! in).

use std::{
    fs,
    io::Write as _,
    os::unix::{fs::symlink, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::{
    cmd,
    demo::{self, HOST_NS, REMOTE, WAN_NS},
};

/// Docker's state, sockets and log. Short, so that socket paths under it stay far below the
/// 108 bytes a unix socket path may have.
const DIR: &str = "/tmp/bpfnat-demo-docker";
const IMAGE: &str = "bpfnat-demo-busybox:1";
/// The Docker network the demo makes, and the name of its bridge. Not the lab's docker1 nor
/// its 172.18.0.0/24: that bridge is the lab's, not Docker's.
const NETWORK: &str = "web";
const BRIDGE: &str = "dockerd1";
const SUBNET: &str = "172.19.0.0/24";
/// lab-host's address on the uplink (what `-p` publishes on), lab-wan's (the client's).
const HOST_ADDR: &str = "203.0.113.2";
const CLIENT_ADDR: &str = "203.0.113.1";
const PORT: &str = "8080";

pub fn run(bin: &Path, duration: Option<Duration>) -> anyhow::Result<()> {
    // The Ctrl-C handler, installed before anything is made.
    crate::stop_flag();
    // Before the lab is built: a missing Docker is a setup problem, not a lab one.
    let tools = Tools::find()?;
    let lab = demo::lab_up(bin)?;

    section(&format!(
        "starting a Docker daemon in {HOST_NS} (its state in {DIR})"
    ))?;
    let docker = Docker::start(&tools)?;
    println!("(`docker` below is `docker -H {}`)", docker.host());
    docker.import_image(&tools.busybox)?;

    let host = docker.host();
    section(&format!(
        "starting the datapath: bpfnat --netns {HOST_NS} up --uplink ens5 --docker-host {host} \
         --status"
    ))?;
    let (datapath, rx) = demo::start_datapath(
        bin,
        &[
            "--netns",
            HOST_NS,
            "up",
            "--uplink",
            "ens5",
            "--docker-host",
            &host,
            "--status",
        ],
    )?;

    let mut failures = Vec::new();

    section("a Docker network made while bpfnat runs")?;
    docker.shown(&[
        "network",
        "create",
        "--subnet",
        SUBNET,
        "-o",
        &format!("com.docker.network.bridge.name={BRIDGE}"),
        NETWORK,
    ])?;
    let created = Instant::now();
    let bridge = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        served_bridge(bin, BRIDGE)
    })?
    .with_context(|| format!("bpfnat did not serve {BRIDGE} within 10 s"))?;
    let served = created.elapsed();
    let subnets: Vec<&str> = bridge["subnets"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "network served {:.2} s after docker network create returned: bridge {BRIDGE} ({})",
        served.as_secs_f64(),
        subnets.join(", ")
    );

    section("a published port (docker run -p), reached from lab-wan")?;
    docker.shown(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        NETWORK,
        "-p",
        "8080:80",
        IMAGE,
        "httpd",
        "-f",
        "-v",
        "-p",
        "80",
    ])?;
    let started = Instant::now();
    let spec = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        published(bin)
    })?
    .context("bpfnat did not publish port 8080 within 10 s")?;
    println!(
        "bpfnat publishes {spec} ({:.2} s after docker run returned)",
        started.elapsed().as_secs_f64()
    );
    println!("$ ip netns exec {WAN_NS} busybox nc {HOST_ADDR} {PORT}   (GET /)");
    match http_get() {
        Ok(answer) => println!("    {}", answer.lines().next().unwrap_or("").trim()),
        Err(e) => {
            println!("    FAILED: {e}");
            failures.push(format!("GET http://{HOST_ADDR}:{PORT}/ from {WAN_NS}"));
        }
    }
    println!("$ docker logs web");
    // The log driver may take a moment to have the request's line.
    let logs = poll(Duration::from_secs(5), Duration::from_millis(100), || {
        docker.logs("web").ok().filter(|l| names_client(l))
    })?;
    match logs {
        Some(logs) => {
            for line in logs.lines() {
                println!("    {line}");
            }
            println!(
                "the server saw {CLIENT_ADDR}, the client's own address: no docker-proxy in \
                 between (Docker runs with --userland-proxy=false), bpfnat rewrote only the \
                 destination"
            );
        }
        None => {
            let logs = docker.logs("web").unwrap_or_else(|e| format!("{e:#}"));
            for line in logs.lines() {
                println!("    {line}");
            }
            failures.push(format!(
                "the web server must see the client as {CLIENT_ADDR}"
            ));
        }
    }

    println!(
        "\n== a container reaching out: masqueraded to {HOST_ADDR} (capture on lab-wan's wan0)"
    );
    docker.shown(&[
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        NETWORK,
        IMAGE,
        "sleep",
        "3600",
    ])?;
    let capture = Command::new("ip")
        .args([
            "netns",
            "exec",
            WAN_NS,
            "tcpdump",
            "-i",
            "wan0",
            "-nn",
            "-l",
            "-c",
            "3",
            "icmp[icmptype] == icmp-echo",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tcpdump")?;
    std::thread::sleep(Duration::from_millis(500));
    if let Err(e) = docker.shown(&["exec", "client", "ping", "-c", "3", REMOTE]) {
        println!("    FAILED: {e:#}");
        failures.push(format!("ping {REMOTE} from the client container"));
    }
    let seen = demo::wait_output(capture, Duration::from_secs(5))?;
    println!("lab-wan saw:");
    for line in seen.lines() {
        println!("    {line}");
    }
    if seen.lines().count() == 0 || seen.lines().any(|l| !l.contains("IP 203.0.113.2 >")) {
        failures.push(format!("lab-wan must see only {HOST_ADDR} as the source"));
    }

    section("the published port closes with its container")?;
    docker.shown(&["stop", "-t", "1", "web"])?;
    let stopped = Instant::now();
    poll(Duration::from_secs(10), Duration::from_millis(20), || {
        published(bin).is_none().then_some(())
    })?
    .context("bpfnat still publishes port 8080 10 s after docker stop")?;
    println!(
        "publish removed {:.2} s after docker stop returned",
        stopped.elapsed().as_secs_f64()
    );
    println!("$ ip netns exec {WAN_NS} busybox nc {HOST_ADDR} {PORT}   (GET /)");
    match http_get() {
        Ok(answer) => {
            println!("    {}", answer.lines().next().unwrap_or("").trim());
            failures.push(format!(
                "{HOST_ADDR}:{PORT} must not answer once web stopped"
            ));
        }
        Err(e) => println!("    no answer: {e}"),
    }

    section(&format!(
        "netfilter in {HOST_NS}: not one rule, with Docker and bpfnat both running"
    ))?;
    let ipt = cmd(Command::new("ip").args(["netns", "exec", HOST_NS, "iptables-save"]))?;
    let rules = ipt.lines().filter(|l| l.starts_with("-A")).count();
    let nft = cmd(Command::new("ip").args(["netns", "exec", HOST_NS, "nft", "list", "ruleset"]))?;
    let tables = nft.lines().filter(|l| l.starts_with("table")).count();
    println!(
        "iptables rules: {rules}; nftables tables: {tables} (Docker runs with --iptables=false, \
         bpfnat needs none)"
    );
    if rules + tables > 0 {
        failures.push(format!("{HOST_NS} must have no firewall rule"));
    }

    demo::live_status(&rx, duration)?;
    println!("\n== tearing down");
    // In this order: the datapath, then Docker (its containers and network), then the lab.
    drop(datapath);
    drop(docker);
    drop(lab);
    if !failures.is_empty() {
        bail!("demo checks failed: {}", failures.join(", "));
    }
    Ok(())
}

/// Where the programs the demo needs are installed.
struct Tools {
    dockerd: PathBuf,
    docker: PathBuf,
    busybox: PathBuf,
    nsenter: PathBuf,
}

impl Tools {
    fn find() -> anyhow::Result<Self> {
        let find = |name: &str| {
            program(name).with_context(|| {
                format!(
                    "`{name}` is not installed: `cargo xtask run --docker` needs Debian's \
                     docker.io (dockerd 20.10, containerd, runc) and busybox-static; run \
                     `cargo xtask setup`"
                )
            })
        };
        // dockerd finds these two itself (on the PATH it is given); checked here so that a
        // missing one is reported as such, not as a daemon that does not start.
        find("containerd")?;
        find("runc")?;
        Ok(Self {
            dockerd: find("dockerd")?,
            docker: find("docker")?,
            busybox: find("busybox")?,
            nsenter: find("nsenter")?,
        })
    }
}

/// PATH, then the system directories (sudo's or a user's PATH often lacks the sbin ones, where
/// Debian puts dockerd and runc).
fn search_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

fn program(name: &str) -> Option<PathBuf> {
    search_path()
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// A Docker daemon of the demo's own, in the lab's host namespace, with its state under
/// [`DIR`]. Stopped and removed when dropped, even when a step failed.
struct Docker {
    docker: PathBuf,
    daemon: Option<Child>,
}

impl Docker {
    /// Start dockerd (after removing what a killed run may have left) and wait, 30 s at most,
    /// until it answers.
    fn start(tools: &Tools) -> anyhow::Result<Self> {
        let dir = Path::new(DIR);
        // Made before dockerd starts: from here on an error drops it and so cleans up.
        let mut docker = Self {
            docker: tools.docker.clone(),
            daemon: None,
        };
        if dir.exists() {
            println!("removing {DIR}, left by an earlier run");
            docker.clean();
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {DIR}"))?;
        // A config file of its own, so that /etc/docker/daemon.json does not apply, and so that
        // dockerd 20.10 writes its trust key here rather than to /etc/docker/key.json.
        fs::write(
            dir.join("daemon.json"),
            format!("{{\"deprecated-key-path\": \"{DIR}/key.json\"}}\n"),
        )
        .context("writing daemon.json")?;
        let log = fs::File::create(dir.join("dockerd.log")).context("creating dockerd.log")?;
        // The firewall, masquerade and docker-proxy are off: that is bpfnat's job, without
        // rules. No default bridge: the lab's docker1 is not Docker's.
        let args = format!(
            "--net=/run/netns/{HOST_NS} {dockerd} --iptables=false --ip6tables=false \
             --ip-masq=false --bridge=none --userland-proxy=false --storage-driver vfs \
             --data-root {DIR}/data --exec-root {DIR}/exec -p {DIR}/dockerd.pid \
             -H unix://{DIR}/docker.sock --config-file {DIR}/daemon.json",
            dockerd = tools.dockerd.display()
        );
        println!("$ nsenter {args}");
        // nsenter, not `ip netns exec`: dockerd must keep this machine's mount namespace (its
        // cgroup and /sys mounts); only the network namespace is the lab's.
        let child = Command::new(&tools.nsenter)
            .args(args.split_whitespace())
            .env("PATH", search_path()) // Where dockerd finds containerd and runc.
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup dockerd.log")?)
            .stderr(log)
            // Its own process group: Ctrl-C on the terminal must not reach dockerd, which is
            // stopped in order (after bpfnat, containers and networks first).
            .process_group(0)
            .spawn()
            .context("starting dockerd")?;
        docker.daemon = Some(child);

        let started = Instant::now();
        let mut exited = None;
        let version = poll(Duration::from_secs(30), Duration::from_millis(100), || {
            exited = docker
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                return Some(None);
            }
            docker
                .docker_for(
                    Duration::from_secs(5),
                    &["version", "--format", "{{.Server.Version}}"],
                )
                .ok()
                .map(Some)
        })?;
        let tail = || {
            let log = fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        match version {
            Some(Some(version)) => println!(
                "dockerd {} answers ({:.1} s)",
                version.trim(),
                started.elapsed().as_secs_f64()
            ),
            Some(None) => bail!(
                "dockerd exited ({}); the end of {DIR}/dockerd.log:\n{}",
                exited.map_or_else(String::new, |s| s.to_string()),
                tail()
            ),
            None => bail!(
                "dockerd did not answer within 30 s; the end of {DIR}/dockerd.log:\n{}",
                tail()
            ),
        }
        Ok(docker)
    }

    /// `unix:///tmp/.../docker.sock`, for the docker CLI and `bpfnat up --docker-host`.
    fn host(&self) -> String {
        format!("unix://{DIR}/docker.sock")
    }

    /// `docker import` of a root filesystem with busybox-static and the applets the demo uses,
    /// and an index page for its web server.
    fn import_image(&self, busybox: &Path) -> anyhow::Result<()> {
        let rootfs = Path::new(DIR).join("rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).context("creating the image's root filesystem")?;
        fs::copy(busybox, bin.join("busybox")).context("copying busybox")?;
        for applet in ["sh", "nc", "httpd", "sleep", "cat", "echo", "ping", "true"] {
            symlink("busybox", bin.join(applet)).context("making an applet symlink")?;
        }
        fs::write(
            rootfs.join("index.html"),
            "hello from a Docker container behind bpfnat\n",
        )
        .context("writing index.html")?;
        let tar = format!("{DIR}/rootfs.tar");
        cmd(Command::new("tar").args(["-C", &rootfs.to_string_lossy(), "-cf", &tar, "."]))?;
        self.shown(&["import", &tar, IMAGE])?;
        Ok(())
    }

    /// `docker -H ... ARGS`, bounded (60 s, so that a hung daemon fails the demo rather than
    /// hanging it); stdout on success, stderr in the error otherwise.
    fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        self.docker_for(Duration::from_secs(60), args)
    }

    fn docker_for(&self, limit: Duration, args: &[&str]) -> anyhow::Result<String> {
        let out = self.output(limit, args)?;
        if !out.status.success() {
            bail!(
                "docker {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn output(&self, limit: Duration, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let out = Command::new("timeout")
            .args(["-k", "5", &limit.as_secs().to_string()])
            .arg(&self.docker)
            .args(["-H", &self.host()])
            .args(args)
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null())
            .output()
            .context("running docker")?;
        if out.status.code() == Some(124) {
            bail!("docker {} timed out after {limit:?}", args.join(" "));
        }
        Ok(out)
    }

    /// Print `$ docker ARGS`, run it and print its output, indented.
    fn shown(&self, args: &[&str]) -> anyhow::Result<String> {
        println!("$ docker {}", args.join(" "));
        let out = self.docker(args)?;
        for line in out.lines() {
            println!("    {line}");
        }
        Ok(out)
    }

    /// A container's log: what it wrote to stdout, then to stderr (docker logs keeps them
    /// apart; busybox httpd logs to stderr).
    fn logs(&self, container: &str) -> anyhow::Result<String> {
        let out = self.output(Duration::from_secs(30), &["logs", container])?;
        if !out.status.success() {
            bail!(
                "docker logs {container} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Remove the containers and networks while dockerd runs (so that it unmounts and deletes
    /// what it made), stop it (SIGTERM, 20 s, then SIGKILL with whatever else runs from
    /// [`DIR`]), unmount what is left under [`DIR`] and remove it. Reports, never fails: it
    /// runs in `drop`.
    fn clean(&mut self) {
        let limit = Duration::from_secs(30);
        if Path::new(DIR).join("docker.sock").exists() {
            let containers = self.docker_for(limit, &["ps", "-aq"]).unwrap_or_default();
            let ids: Vec<&str> = containers.split_whitespace().collect();
            if !ids.is_empty() {
                let args: Vec<&str> = ["rm", "-f"].into_iter().chain(ids).collect();
                if let Err(e) = self.docker_for(limit, &args) {
                    eprintln!("{e:#}");
                }
            }
            let networks = self
                .docker_for(limit, &["network", "ls", "-q", "--filter", "type=custom"])
                .unwrap_or_default();
            let ids: Vec<&str> = networks.split_whitespace().collect();
            if !ids.is_empty() {
                let args: Vec<&str> = ["network", "rm"].into_iter().chain(ids).collect();
                if let Err(e) = self.docker_for(limit, &args) {
                    eprintln!("{e:#}");
                }
            }
        }

        // The pid file's dockerd (ours, or a killed run's), if that pid still is a dockerd of
        // DIR: a pid is reused.
        let dockerd = fs::read_to_string(Path::new(DIR).join("dockerd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|&pid| mentions_dir(pid))
            .or_else(|| self.daemon.as_ref().map(Child::id));
        if let Some(pid) = dockerd {
            signal("TERM", pid);
            let gone = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
                self.reap();
                (!alive(pid)).then_some(())
            });
            if gone.is_none() {
                eprintln!("dockerd ignored SIGTERM for 20 s: killing it");
            }
        }
        // Whatever still runs: dockerd, its containerd and shims (their command lines name
        // DIR), and the containers' processes (found by cgroup, in case their shim is dead).
        let containers: Vec<String> = fs::read_dir(Path::new(DIR).join("data/containers"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let leftovers = || {
            pids(|pid| {
                let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
                mentions_dir(pid) || containers.iter().any(|id| cgroup.contains(id.as_str()))
            })
        };
        for pid in leftovers() {
            signal("KILL", pid);
        }
        let gone = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
            self.reap();
            leftovers().is_empty().then_some(())
        });
        if gone.is_none() {
            eprintln!("processes of {DIR} survived SIGKILL: {:?}", leftovers());
        }
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }

        // Deepest first: the container root filesystems and network namespaces of a dockerd
        // that could not clean up.
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| Path::new(m).starts_with(DIR))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            if let Err(e) = cmd(Command::new("umount").args(["-l", m])) {
                eprintln!("{e:#}");
            }
        }
        match fs::remove_dir_all(DIR) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => eprintln!("rm -rf {DIR}: {e}"),
            _ => {}
        }
    }

    /// Collect our dockerd if it exited, so that it does not linger as a zombie.
    fn reap(&mut self) {
        if let Some(child) = self.daemon.as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                self.daemon = None;
            }
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        self.clean();
        if Path::new(DIR).exists() {
            eprintln!("{DIR} could not be removed");
        } else {
            println!("Docker stopped, {DIR} removed");
        }
    }
}

/// Whether process `pid`'s command line names something under [`DIR`] (our own is not one).
fn mentions_dir(pid: u32) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    pid != std::process::id() && String::from_utf8_lossy(&cmdline).contains(&format!("{DIR}/"))
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The live processes for which `keep` (given the pid) is true.
fn pids(keep: impl Fn(u32) -> bool) -> Vec<u32> {
    let procs = fs::read_dir("/proc").into_iter().flatten().flatten();
    let all = procs.filter_map(|e| e.file_name().to_str()?.parse().ok());
    all.filter(|&pid| alive(pid) && keep(pid)).collect()
}

/// Print a section's title; fail instead if Ctrl-C was pressed, so that the guards tear down
/// at once rather than after the remaining steps.
fn section(title: &str) -> anyhow::Result<()> {
    if crate::interrupted() {
        println!("\n== interrupted: tearing down");
        bail!("interrupted");
    }
    println!("\n== {title}");
    Ok(())
}

/// Call `f` every `every` until it returns something or `limit` has passed (`Ok(None)`).
/// Ctrl-C ends the wait with an error, so that the guards tear down at once.
fn poll<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<Option<T>> {
    wait_for(limit, every, || {
        if crate::interrupted() {
            println!("\n== interrupted: tearing down");
            Some(Err(anyhow::anyhow!("interrupted")))
        } else {
            f().map(Ok)
        }
    })
    .transpose()
}

/// Same, but deaf to Ctrl-C: for the tear-down, which must wait for what it stops.
fn wait_for<T>(limit: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// `bpfnat --netns lab-host --json ARGS`, parsed; None if it fails.
fn bpfnat_json(bin: &Path, args: &[&str]) -> Option<Value> {
    let out = Command::new(bin)
        .args(["--netns", HOST_NS, "--json"])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// The entry of `bpfnat status` for bridge `name`, once it is served.
fn served_bridge(bin: &Path, name: &str) -> Option<Value> {
    let status = bpfnat_json(bin, &["status"])?;
    status["bridges"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
}

/// The spec of the port published on 8080 (with its container's address), if there is one.
fn published(bin: &Path) -> Option<String> {
    let list = bpfnat_json(bin, &["publish", "list"])?;
    list.as_array()?
        .iter()
        .find(|p| p["host_port"].as_u64() == PORT.parse().ok() && !p["container_addr"].is_null())
        .map(|p| p["spec"].as_str().unwrap_or("?").to_owned())
}

/// Whether httpd's log names the client's address as the peer: `203.0.113.1:PORT`, or
/// `[::ffff:203.0.113.1]:PORT` (it listens on an IPv6 socket), and not, say, `203.0.113.10`.
fn names_client(log: &str) -> bool {
    log.contains(&format!("{CLIENT_ADDR}:")) || log.contains(&format!("{CLIENT_ADDR}]:"))
}

/// `GET /` to the published port from lab-wan (busybox nc, bounded): the answer, or why there
/// is none.
fn http_get() -> Result<String, String> {
    let mut child = Command::new("timeout")
        .args(["-k", "2", "10", "ip", "netns", "exec", WAN_NS])
        .args(["busybox", "nc", "-w", "3", HOST_ADDR, PORT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nc: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let request = format!("GET / HTTP/1.0\r\nHost: {HOST_ADDR}:{PORT}\r\n\r\n");
        stdin
            .write_all(request.as_bytes())
            .map_err(|e| format!("writing the request: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nc: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && !stdout.is_empty() {
        Ok(stdout)
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(match out.status.code() {
            Some(124) => "timed out".to_owned(),
            _ if err.is_empty() => format!("empty answer ({})", out.status),
            _ => err,
        })
    }
}
