//! End to end: every mode of `bpfnat-loadgen` between two network namespaces
//! joined by a veth pair (10.96.0.1/24 in `bnt-lg-<test>-a`, 10.96.0.2/24 in
//! `bnt-lg-<test>-b`). Each test builds its own pair, so tests run in
//! parallel, and a Drop guard deletes the namespaces (and with them the
//! veth) even when an assertion fails. Needs root; skipped otherwise.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bpfnat-loadgen");
const CLIENT_IP: &str = "10.96.0.1";
const SERVER_IP: &str = "10.96.0.2";

/// First line of every test marked `#[ignore = "needs root: ..."]`: `cargo xtask test` runs
/// them (`--include-ignored`, as root); run by hand without root they fail with this message
/// instead of passing empty.
fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces): run `cargo xtask test` as root"
    );
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must_ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair, plus a scratch directory; both
/// removed on drop.
struct Topo {
    a: String,
    b: String,
    dir: PathBuf,
}

impl Topo {
    fn new(tag: &str) -> Topo {
        require_root();
        let topo = Topo {
            a: format!("bnt-lg-{tag}-a"),
            b: format!("bnt-lg-{tag}-b"),
            dir: std::env::temp_dir().join(format!("bnt-lg-{tag}-{}", std::process::id())),
        };
        // Leftovers of a run that was killed before its guard ran.
        ip(&["netns", "del", &topo.a]);
        ip(&["netns", "del", &topo.b]);
        let _ = fs::remove_dir_all(&topo.dir);
        fs::create_dir_all(&topo.dir).expect("scratch dir");
        let (a, b) = (topo.a.as_str(), topo.b.as_str());
        must_ip(&["netns", "add", a]);
        must_ip(&["netns", "add", b]);
        // Created inside `a` with its peer moved straight into `b`: the
        // host's own namespace never sees either end.
        must_ip(&[
            "-n", a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", b,
        ]);
        must_ip(&["-n", a, "addr", "add", "10.96.0.1/24", "dev", "veth0"]);
        must_ip(&["-n", b, "addr", "add", "10.96.0.2/24", "dev", "veth1"]);
        for (ns, dev) in [(a, "lo"), (a, "veth0"), (b, "lo"), (b, "veth1")] {
            must_ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        topo
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts the loadgen in namespace `ns`; stdout/stderr go to files in
    /// the scratch directory (no pipe to fill up while nobody reads).
    fn spawn(&self, ns: &str, name: &str, args: &[&str]) -> Proc {
        let out = fs::File::create(self.path(&format!("{name}.out"))).expect("stdout file");
        let err = fs::File::create(self.path(&format!("{name}.err"))).expect("stderr file");
        let child = Command::new(BIN)
            .arg("--netns")
            .arg(ns)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning bpfnat-loadgen");
        Proc {
            child: Some(child),
            out: self.path(&format!("{name}.out")),
            err: self.path(&format!("{name}.err")),
            name: name.to_string(),
        }
    }

    /// Starts a server and waits for its ready file.
    fn server(&self, name: &str, args: &[&str]) -> Proc {
        let ready = self.path(&format!("{name}.ready"));
        let mut full: Vec<&str> = args.to_vec();
        let ready_str = ready.to_str().expect("utf-8 path").to_string();
        full.extend(["--ready-file", &ready_str]);
        let proc = self.spawn(&self.b, name, &full);
        if !wait_file(&ready, Duration::from_secs(10)) {
            let done = proc.finish(Duration::from_secs(1));
            panic!("{name} never became ready: {}", done.stderr);
        }
        proc
    }

    /// Runs a client in namespace `a` to completion.
    fn client(&self, name: &str, args: &[&str], timeout: Duration) -> Done {
        self.spawn(&self.a, name, args).finish(timeout)
    }

    /// Number of TCP sockets in `state` (ss state filter) inside `ns`.
    fn tcp_sockets(&self, ns: &str, state: &str) -> usize {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-Htan", "state", state])
            .output()
            .expect("running ss");
        assert!(out.status.success(), "ss failed");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.a]);
        ip(&["netns", "del", &self.b]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A loadgen process we started; killed (by its pid) if still running when
/// dropped.
struct Proc {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    name: String,
}

struct Done {
    status: ExitStatus,
    json: Value,
    stderr: String,
}

impl Proc {
    /// Waits for exit (killing it after `timeout`) and parses its JSON.
    fn finish(mut self, timeout: Duration) -> Done {
        let mut child = self.child.take().expect("child");
        let until = Instant::now() + timeout;
        let status = loop {
            match child.try_wait().expect("try_wait") {
                Some(status) => break status,
                None if Instant::now() >= until => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{} still running after {timeout:?}; stderr: {}",
                        self.name,
                        fs::read_to_string(&self.err).unwrap_or_default()
                    );
                }
                None => thread::sleep(Duration::from_millis(20)),
            }
        };
        let stdout = fs::read_to_string(&self.out).unwrap_or_default();
        let stderr = fs::read_to_string(&self.err).unwrap_or_default();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{}: expected one JSON line, got {stdout:?}; stderr {stderr}",
            self.name
        );
        let json: Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("{}: bad JSON {e}: {stdout}", self.name));
        eprintln!("{}: {json}", self.name);
        Done {
            status,
            json,
            stderr,
        }
    }

    /// SIGTERM: the server stops and still prints its JSON.
    fn terminate(&self) {
        if let Some(child) = &self.child {
            // SAFETY: plain kill() of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_file(path: &Path, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if path.exists() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a count in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

fn assert_ok(done: &Done) {
    assert!(
        done.status.success() && done.json["ok"] == Value::Bool(true),
        "{} / {}",
        done.json,
        done.stderr
    );
}

fn server_addr(port: u16) -> String {
    format!("{SERVER_IP}:{port}")
}

/// Opens, verifies and holds `count` connections from one client process to
/// one server process, then releases them; both sides must agree.
fn hold(tag: &str, count: usize, check_while_held: bool, extra: &[&str]) {
    let topo = Topo::new(tag);
    let count_s = count.to_string();
    let listen = server_addr(7000);
    let server = topo.server(
        "server",
        &[
            "--duration",
            "90",
            "tcp-hold-server",
            "--listen",
            &listen,
            "--expect",
            &count_s,
        ],
    );
    let ready = topo.path("clients.ready");
    let release = topo.path("clients.release");
    let (ready_s, release_s) = (
        ready.to_str().unwrap().to_string(),
        release.to_str().unwrap().to_string(),
    );
    let started = Instant::now();
    let mut args = vec![
        "--duration",
        "80",
        "tcp-hold-clients",
        "--connect",
        &listen,
        "--count",
        &count_s,
        "--ready-file",
        &ready_s,
        "--release-file",
        &release_s,
    ];
    args.extend_from_slice(extra);
    let clients = topo.spawn(&topo.a, "clients", &args);
    assert!(
        wait_file(&ready, Duration::from_secs(60)),
        "clients never got ready"
    );
    let setup = started.elapsed();
    assert_eq!(
        fs::read_to_string(&ready).unwrap().trim(),
        format!("established {count}")
    );
    if check_while_held {
        // The connections really are established on the server side now.
        let held = topo.tcp_sockets(&topo.b, "established");
        assert_eq!(held, count, "established sockets in {} while held", topo.b);
    }
    fs::write(&release, "go").unwrap();
    let c = clients.finish(Duration::from_secs(60));
    let s = server.finish(Duration::from_secs(60));
    eprintln!("{tag}: {count} connections up in {setup:?}");
    assert_ok(&c);
    assert!(
        c.stderr.contains(&format!("established {count}")),
        "{}",
        c.stderr
    );
    for key in [
        "requested",
        "attempted",
        "established",
        "echoed",
        "closed_clean",
    ] {
        assert_eq!(u(&c.json, key), count as u64, "client {key}");
    }
    assert_eq!(u(&c.json, "failed"), 0);
    assert_eq!(u(&c.json, "lost_during_hold"), 0);
    assert_ok(&s);
    for key in ["accepted", "closed", "peak_open"] {
        assert_eq!(u(&s.json, key), count as u64, "server {key}");
    }
    assert_eq!(u(&s.json, "peers_distinct"), 1);
    assert_eq!(s.json["peer_ips"], serde_json::json!([CLIENT_IP]));
    assert_eq!(u(&s.json, "bytes_echoed"), 16 * count as u64);
    if count > 19_000 - 1 {
        // One more than the descriptors allow is refused up front.
        let over = topo.client(
            "over",
            &["tcp-hold-clients", "--connect", &listen, "--count", "20000"],
            Duration::from_secs(10),
        );
        assert_eq!(over.status.code(), Some(2), "{}", over.json);
        assert!(over.json["error"]
            .as_str()
            .unwrap()
            .contains("open-file limit"));
    }
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn hold_2000_connections_across_the_veth() {
    // Source ports chosen by the kernel, as for any client.
    hold("hold", 2000, true, &[]);
}

/// The per-process ceiling: the hard RLIMIT_NOFILE is 20,000 here, so one
/// client process holds 19,000 connections to one server process (one
/// descriptor each, on both sides).
///
/// With `--source-ports`: left to the kernel, connect() first tries only
/// the even half of ip_local_port_range (14,116 ports by default) and, once
/// those are used for this destination, scans all of them on every further
/// connect: 19,000 connections then take ~20 s instead of ~2.5 s.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn hold_19000_connections_from_one_process() {
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: hard is a valid rlimit to fill.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) };
    let count = 19_000usize.min((hard.rlim_max as usize).saturating_sub(64));
    if count < 19_000 {
        eprintln!(
            "open-file hard limit {}: scaled down to {count}",
            hard.rlim_max
        );
    }
    hold("hold19k", count, false, &["--source-ports", "20000-39999"]);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn hold_clients_report_refused_connections() {
    let topo = Topo::new("refused");
    // Nobody listens on the server side: every connect is refused.
    let c = topo.client(
        "clients",
        &[
            "--duration",
            "10",
            "tcp-hold-clients",
            "--connect",
            &server_addr(7999),
            "--count",
            "50",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(c.status.code(), Some(1), "{}", c.json);
    assert_eq!(c.json["ok"], Value::Bool(false));
    assert!(c.json["failure"].as_str().unwrap().contains("only 0 of 50"));
    assert_eq!(u(&c.json["connect_errors"], "ECONNREFUSED"), 50);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn tcp_stream_moves_bytes_and_both_sides_agree() {
    let topo = Topo::new("stream");
    let listen = server_addr(7001);
    let server = topo.server(
        "server",
        &[
            "--duration",
            "20",
            "tcp-stream-server",
            "--listen",
            &listen,
            "--expect",
            "2",
        ],
    );
    let c = topo.client(
        "client",
        &[
            "--duration",
            "10",
            "tcp-stream",
            "--connect",
            &listen,
            "--flows",
            "2",
            "--seconds",
            "1",
        ],
        Duration::from_secs(20),
    );
    let s = server.finish(Duration::from_secs(20));
    assert_ok(&c);
    assert_ok(&s);
    assert!(f(&c.json, "gbit_per_sec") > 0.0);
    // The client only stops the clock once the server has read everything.
    assert_eq!(u(&c.json, "bytes"), u(&s.json, "bytes"));
    let per_flow = c.json["per_flow_bytes"].as_array().unwrap();
    assert_eq!(per_flow.len(), 2);
    assert!(per_flow.iter().all(|b| b.as_u64().unwrap() > 0));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn tcp_stream_bytes_limit() {
    let topo = Topo::new("bytes");
    let listen = server_addr(7001);
    let server = topo.server(
        "server",
        &[
            "--duration",
            "20",
            "tcp-stream-server",
            "--listen",
            &listen,
            "--expect",
            "1",
        ],
    );
    let c = topo.client(
        "client",
        &[
            "--duration",
            "10",
            "tcp-stream",
            "--connect",
            &listen,
            "--seconds",
            "5",
            "--bytes",
            "10000000",
        ],
        Duration::from_secs(20),
    );
    let s = server.finish(Duration::from_secs(20));
    assert_ok(&c);
    assert_ok(&s);
    assert_eq!(u(&c.json, "bytes"), 10_000_000);
    assert_eq!(u(&s.json, "bytes"), 10_000_000);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn tcp_rr_reports_rate_and_latency() {
    let topo = Topo::new("rr");
    let listen = server_addr(7002);
    let server = topo.server(
        "server",
        &[
            "--duration",
            "20",
            "tcp-rr-server",
            "--listen",
            &listen,
            "--expect",
            "2",
        ],
    );
    let c = topo.client(
        "client",
        &[
            "--duration",
            "10",
            "tcp-rr",
            "--connect",
            &listen,
            "--size",
            "64",
            "--seconds",
            "1",
            "--conns",
            "2",
        ],
        Duration::from_secs(20),
    );
    let s = server.finish(Duration::from_secs(20));
    assert_ok(&c);
    assert_ok(&s);
    let n = u(&c.json, "transactions");
    assert!(n > 0);
    assert!(f(&c.json, "per_sec") > 0.0);
    let (p50, p99) = (f(&c.json, "p50_us"), f(&c.json, "p99_us"));
    assert!(p50 > 0.0 && p99 >= p50, "p50 {p50} p99 {p99}");
    assert_eq!(u(&s.json, "messages"), n);
    assert_eq!(u(&s.json, "bytes_echoed"), 64 * n);
    // In-flight requests are finished before closing: no resets.
    assert_eq!(s.json["errors"], serde_json::json!({}));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn tcp_crr_server_closes_first_so_the_client_keeps_no_time_wait() {
    let topo = Topo::new("crr");
    let listen = server_addr(7002);
    let server = topo.server(
        "server",
        &["--duration", "20", "tcp-rr-server", "--listen", &listen],
    );
    let c = topo.client(
        "client",
        &[
            "--duration",
            "10",
            "tcp-crr",
            "--connect",
            &listen,
            "--seconds",
            "1",
            "--parallel",
            "4",
        ],
        Duration::from_secs(20),
    );
    let client_tw = topo.tcp_sockets(&topo.a, "time-wait");
    let server_tw = topo.tcp_sockets(&topo.b, "time-wait");
    server.terminate();
    let s = server.finish(Duration::from_secs(10));
    assert_ok(&c);
    assert_ok(&s);
    let n = u(&c.json, "connections");
    assert!(n > 0 && f(&c.json, "per_sec") > 0.0);
    assert_eq!(u(&c.json, "failed"), 0);
    assert_eq!(u(&s.json, "server_closes"), n);
    assert_eq!(u(&s.json, "messages"), n);
    assert_eq!(s.json["errors"], serde_json::json!({}));
    assert_eq!(client_tw, 0, "the client must not collect TIME_WAIT");
    assert!(server_tw > 0, "TIME_WAIT belongs on the server");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn udp_flood_at_a_fixed_rate_reaches_the_sink() {
    let topo = Topo::new("udp");
    let listen = server_addr(7003);
    let sink = topo.server(
        "sink",
        &[
            "--duration",
            "20",
            "udp-sink",
            "--listen",
            &listen,
            "--idle-exit",
            "1",
        ],
    );
    let c = topo.client(
        "flood",
        &[
            "--duration",
            "10",
            "udp-flood",
            "--connect",
            &listen,
            "--size",
            "64",
            "--rate",
            "10000",
            "--seconds",
            "1",
        ],
        Duration::from_secs(20),
    );
    let s = sink.finish(Duration::from_secs(20));
    assert_ok(&c);
    assert_ok(&s);
    let got = u(&s.json, "packets");
    assert!((8_000..=12_000).contains(&got), "sink got {got} packets");
    assert_eq!(u(&s.json, "bytes"), 64 * got);
    let sent = u(&c.json, "packets");
    assert!((9_000..=11_000).contains(&sent), "flood sent {sent}");
    assert_eq!(c.json["rate_achieved"], Value::Bool(true));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn udp_sink_replies_to_every_flow() {
    let topo = Topo::new("udprr");
    let listen = server_addr(7004);
    let sink = topo.server(
        "sink",
        &[
            "--duration",
            "20",
            "udp-sink",
            "--listen",
            &listen,
            "--reply",
            "--idle-exit",
            "1",
        ],
    );
    let c = topo.client(
        "flood",
        &[
            "--duration",
            "10",
            "udp-flood",
            "--connect",
            &listen,
            "--rate",
            "4000",
            "--seconds",
            "0.5",
            "--flows",
            "4",
            "--replies",
        ],
        Duration::from_secs(20),
    );
    let s = sink.finish(Duration::from_secs(20));
    assert_ok(&c);
    assert_ok(&s);
    let sent = u(&c.json, "packets");
    assert_eq!(u(&s.json, "packets"), sent, "nothing lost at this rate");
    assert_eq!(u(&s.json, "replies"), sent);
    assert_eq!(u(&c.json, "replies"), sent);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn duration_caps_a_server_waiting_for_clients() {
    let topo = Topo::new("cap");
    let started = Instant::now();
    let s = topo
        .spawn(
            &topo.b,
            "server",
            &[
                "--duration",
                "0.5",
                "tcp-hold-server",
                "--listen",
                &server_addr(7000),
                "--expect",
                "1",
            ],
        )
        .finish(Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(s.status.code(), Some(1));
    assert!(s.json["failure"]
        .as_str()
        .unwrap()
        .contains("accepted 0 of the 1"));
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn missing_namespace_is_an_error_with_json() {
    require_root();
    let out = Command::new(BIN)
        .args([
            "--netns",
            "bnt-lg-does-not-exist",
            "udp-sink",
            "--listen",
            "192.0.2.1:9",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], Value::Bool(false));
    assert!(json["error"]
        .as_str()
        .unwrap()
        .contains("bnt-lg-does-not-exist"));
}
