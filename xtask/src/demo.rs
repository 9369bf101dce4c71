//! `cargo xtask run`: the lab, the datapath in it, and a demonstration that it works.

use std::{
    io::{BufRead as _, BufReader, IsTerminal as _, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{atomic::Ordering, mpsc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::cmd;

pub(crate) const HOST_NS: &str = "lab-host";
pub(crate) const WAN_NS: &str = "lab-wan";
const CONTAINERS: [(&str, &str); 2] = [("ns1", "172.18.0.2"), ("ns2", "172.18.0.3")];
pub(crate) const REMOTE: &str = "198.51.100.1";
/// The lab's IPv6: its containers (fd00:18::2, ::3), the uplink's address, the remote.
const CONTAINERS6: [(&str, &str); 2] = [("ns1", "fd00:18::2"), ("ns2", "fd00:18::3")];
const UPLINK6: &str = "2001:db8::2";
const REMOTE6: &str = "2001:db8:100::1";
/// Namespaces the lab creates; the tests' own namespaces all start with `bnt-`, the
/// benchmark's with `bnb-`.
pub const LAB_NAMESPACES: [&str; 4] = ["ns1", "ns2", "lab-host", "lab-wan"];

/// Network namespaces made by this project that exist now.
pub fn leftover_namespaces() -> anyhow::Result<Vec<String>> {
    let list = cmd(Command::new("ip").args(["netns", "list"]))?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("bnt-") || n.starts_with("bnb-") || LAB_NAMESPACES.contains(n))
        .map(str::to_owned)
        .collect())
}

/// Removes the lab when dropped, so an error or Ctrl-C never leaves it behind.
pub(crate) struct Lab<'a> {
    bin: &'a Path,
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        match Command::new(self.bin).args(["lab", "down"]).output() {
            Ok(o) if o.status.success() => println!("lab removed"),
            Ok(o) => eprintln!(
                "lab down failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("lab down failed: {e}"),
        }
    }
}

/// A running `bpfnat ... up --status`, stopped when dropped. Made after the lab's guard (and
/// Docker's), it is dropped before them: the datapath goes first, then what it served.
pub(crate) struct Datapath(Child);

impl Drop for Datapath {
    fn drop(&mut self) {
        stop_gracefully(&mut self.0);
    }
}

fn stop_gracefully(child: &mut Child) {
    // SIGINT first: bpfnat detaches its programs and reports "stopped".
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Build the lab (`bpfnat lab up`), print what it made and return its guard.
pub(crate) fn lab_up(bin: &Path) -> anyhow::Result<Lab<'_>> {
    println!("== building the lab (namespaces ns1, ns2, lab-host, lab-wan)");
    let out = cmd(Command::new(bin).args(["lab", "up"]))?;
    let lab = Lab { bin };
    print!("{out}");
    Ok(lab)
}

/// Start `bpfnat ARGS` (ARGS with `--status`) and wait, 30 s at most, for its first line, which
/// must start with `ready:`, and print it. The channel then gets its status lines.
pub(crate) fn start_datapath(
    bin: &Path,
    args: &[&str],
) -> anyhow::Result<(Datapath, mpsc::Receiver<String>)> {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting bpfnat")?;
    let stdout = child.stdout.take().context("bpfnat stdout")?;
    let datapath = Datapath(child);
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .context("bpfnat did not become ready in 30 s")?;
    if !ready.starts_with("ready:") {
        bail!("bpfnat: unexpected first line {ready:?}");
    }
    println!("{ready}");
    Ok((datapath, rx))
}

/// Show the datapath's status lines (one line rewritten in place on a terminal) until Ctrl-C
/// or until `duration` has passed.
pub(crate) fn live_status(
    rx: &mpsc::Receiver<String>,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let stop = crate::stop_flag();
    println!("\n== live status (Ctrl-C to stop and tear everything down)");
    // Status lines printed while the checks ran are stale now.
    while rx.try_recv().is_ok() {}
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    while !stop.load(Ordering::SeqCst) && duration.is_none_or(|d| started.elapsed() < d) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if tty => {
                print!("\r{line}\x1b[K");
                std::io::stdout().flush().ok();
            }
            Ok(line) => println!("{line}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("bpfnat exited unexpectedly"),
        }
    }
    Ok(())
}

pub fn run(bin: &Path, duration: Option<Duration>) -> anyhow::Result<()> {
    // The Ctrl-C handler, installed before anything is made.
    crate::stop_flag();
    let lab = lab_up(bin)?;

    println!("\n== netfilter in {HOST_NS}: the nat tables must be empty (no MASQUERADE anywhere)");
    let ipt =
        cmd(Command::new("ip").args(["netns", "exec", HOST_NS, "iptables-save", "-t", "nat"]))?;
    let rules = ipt.lines().filter(|l| l.starts_with("-A")).count();
    let nft = cmd(Command::new("ip").args(["netns", "exec", HOST_NS, "nft", "list", "ruleset"]))?;
    println!(
        "iptables nat rules: {rules}; nftables ruleset: {}",
        if nft.trim().is_empty() {
            "empty"
        } else {
            "NOT empty"
        }
    );

    println!("\n== starting the datapath: bpfnat --netns {HOST_NS} up --uplink ens5 --bridge docker1 --status");
    let (datapath, rx) = start_datapath(
        bin,
        &[
            "--netns", HOST_NS, "up", "--uplink", "ens5", "--bridge", "docker1", "--status",
        ],
    )?;

    let mut failures = Vec::new();
    println!("\n== ping {REMOTE} from each container, capturing on lab-wan's wan0");
    failures.extend(ping_through_nat(
        &CONTAINERS,
        REMOTE,
        "icmp[icmptype] == icmp-echo",
        "IP 203.0.113.2 >",
    )?);
    println!("\n== IPv6 (NAT66): ping6 {REMOTE6} from each container, capturing on wan0");
    failures.extend(ping_through_nat(
        &CONTAINERS6,
        REMOTE6,
        "icmp6 and ip6[40] == 128",
        &format!("IP6 {UPLINK6} >"),
    )?);

    println!("\n== TCP transfer (iperf3, 20 MB) from each container to {REMOTE}");
    for (ns, _) in CONTAINERS {
        let server = Command::new("ip")
            .args([
                "netns", "exec", WAN_NS, "iperf3", "-s", "-1", "-B", REMOTE, "-p", "5201",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 server")?;
        std::thread::sleep(Duration::from_millis(500));
        let client = cmd(Command::new("ip").args([
            "netns", "exec", ns, "iperf3", "-c", REMOTE, "-p", "5201", "-n", "20M", "-f", "m",
        ]))
        .unwrap_or_else(|e| format!("FAILED: {e:#}"));
        let server_out = wait_output(server, Duration::from_secs(10))?;
        let peer = server_out
            .lines()
            .find(|l| l.contains("Accepted connection from"))
            .unwrap_or("(no connection)");
        let rate = client
            .lines()
            .rev()
            .find(|l| l.contains("receiver"))
            .unwrap_or("(no result)");
        println!("{ns}: server says: {}", peer.trim());
        println!("{ns}: {}", rate.trim());
        if !peer.contains("Accepted connection from 203.0.113.2") || !rate.contains("receiver") {
            failures.push(format!("TCP transfer from {ns}"));
        }
    }

    live_status(&rx, duration)?;
    println!("\n== tearing down");
    drop(datapath);
    drop(lab);
    if !failures.is_empty() {
        bail!("demo checks failed: {}", failures.join(", "));
    }
    Ok(())
}

/// Ping `remote` from each container (two echoes each) while lab-wan captures the echo
/// requests (`filter`): every one must show `source` (the uplink's address) as its source.
/// Returns what failed.
fn ping_through_nat(
    containers: &[(&str, &str)],
    remote: &str,
    filter: &str,
    source: &str,
) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    let capture = Command::new("ip")
        .args([
            "netns", "exec", WAN_NS, "tcpdump", "-i", "wan0", "-nn", "-l", "-c", "4", filter,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tcpdump")?;
    std::thread::sleep(Duration::from_millis(500));
    for (ns, ip) in containers {
        let ok = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-c", "2", "-W", "2", "-q", remote,
            ])
            .stdout(Stdio::null())
            .status()?
            .success();
        println!(
            "{ns} ({ip}) -> {remote}: ping {}",
            if ok { "OK" } else { "FAILED" }
        );
        if !ok {
            failures.push(format!("ping from {ns} to {remote}"));
        }
    }
    let seen = wait_output(capture, Duration::from_secs(5))?;
    println!("lab-wan saw:");
    for line in seen.lines() {
        println!("    {line}");
    }
    if seen.lines().count() == 0 || seen.lines().any(|l| !l.contains(source)) {
        failures.push(format!("lab-wan must see only {source} as the source"));
    }
    Ok(failures)
}

/// Collect a child's stdout, killing it if it has not exited after `limit`.
pub(crate) fn wait_output(mut child: Child, limit: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
