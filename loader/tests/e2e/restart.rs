//! Restart and upgrade without loss: pinned TCX links keep the datapath running while the
//! loader is gone (killed, or stopped with `up --keep`); the next `up` adopts the pinned
//! tables and puts its programs behind the pinned links; `bpfnat down` removes what is left.
//! Each test builds its own lab (`bnt-rsN-*`, containers 10.88.N.0/24, uplink
//! 192.0.2.(150+N)/24, remote 198.51.100.88). The tests run one at a time (they move data
//! for several seconds and time it).

use crate::support::require_root_alone;

use crate::support::cli::bpfnat;
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::support::e2e::{
    echo_peer, spawn_in, tcp_sink, udp_echo, udp_request_from, Daemon, Lab, Stream,
};
use aya::maps::{HashMap, Map, MapData};
use bpfnat::host::lab::LabSpec;
use bpfnat_common::{Counter, FlowKey, NatEntry};

const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 88);
const TCP_PORT: u16 = 7101;
const UDP_PORT: u16 = 7102;
const UDP_SPORT: u16 = 41001;
const SEED: u64 = 0x5eed_0088;

fn spec(n: u8) -> LabSpec {
    crate::support::topo::test_lab(
        &format!("bnt-rs{n}"),
        [10, 88, n],
        1,
        Ipv4Addr::new(192, 0, 2, 150 + n),
        Ipv4Addr::new(192, 0, 2, 240 + n),
        REMOTE,
    )
}

const UP_ARGS: [&str; 4] = ["--uplink", "up0", "--bridge", "br0"];

fn pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/bpfnat").join(instance)
}

/// Removes an instance's pinned state if a test leaves it behind (runs after the daemon
/// guard, before the lab guard: declare it between them).
struct PinGuard(String);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if pin_dir(&self.0).exists() {
            let _ = bpfnat(&["--instance", &self.0, "down"]);
        }
    }
}

/// The CLI must fail with exactly one line on stderr containing every one of `expected`.
fn assert_one_line_error(args: &[&str], expected: &[&str]) {
    let (code, _, stderr) = bpfnat(args);
    assert_ne!(code, 0, "{args:?} should fail");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line:\n{stderr}");
    for e in expected {
        assert!(
            lines[0].starts_with("bpfnat: error: ") && lines[0].contains(e),
            "{args:?}: expected {e:?} in {stderr}"
        );
    }
}

fn open_pinned(instance: &str, map: &str) -> Map {
    let path = pin_dir(instance).join(map);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Map::from_map_data(data).expect("map")
}

/// Original tuple (src, dst, sport, dport, proto) -> external (addr, port).
type Mappings = BTreeMap<(u32, u32, u16, u16, u8), (u32, u16)>;

/// The mappings of `container` in the pinned NAT_OUT.
fn mappings(instance: &str, container: Ipv4Addr) -> Mappings {
    let map = open_pinned(instance, "NAT_OUT");
    let table: HashMap<&MapData, FlowKey, NatEntry> = HashMap::try_from(&map).expect("NAT_OUT");
    let src = bpfnat_common::addr_to_map(container.octets());
    table
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.src_addr == src)
        .map(|(k, e)| {
            (
                (k.src_addr, k.dst_addr, k.src_port, k.dst_port, k.proto),
                (e.addr, e.port),
            )
        })
        .collect()
}

fn counter(instance: &str, which: Counter) -> u64 {
    let map = open_pinned(instance, "COUNTERS");
    bpfnat::bpf::datapath::read_counters(&map)
        .expect("counters")
        .into_iter()
        .find(|(c, _)| *c == which)
        .map_or(0, |(_, v)| v)
}

/// (hook, name, id) of the TCX programs on `iface` in `ns`.
fn programs(ns: &str, iface: &str) -> Vec<(String, String, u32)> {
    let iface = iface.to_owned();
    spawn_in(ns, move || bpfnat::bpf::datapath::tcx_programs(&iface))
        .join()
        .expect("query thread")
        .expect("query TCX")
        .into_iter()
        .map(|p| (p.hook.to_owned(), p.name, p.id))
        .collect()
}

/// A TCP sender from `ns` to `dst` streaming `Stream::new(SEED)` in 64 KiB blocks, about
/// `rate` blocks a second, until stopped; then it closes and waits for the sink's answer.
/// Returns (bytes sent, answer).
struct PacedTcp {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Result<(u64, String), String>>,
}

impl PacedTcp {
    fn start(ns: &str, dst: SocketAddrV4, rate: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = spawn_in(ns, move || {
            let mut sock = TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(3))
                .map_err(|e| format!("connect {dst}: {e}"))?;
            sock.set_write_timeout(Some(Duration::from_secs(10))).ok();
            sock.set_read_timeout(Some(Duration::from_secs(20))).ok();
            let mut gen = Stream::new(SEED);
            let mut buf = vec![0u8; 1 << 16];
            let mut sent = 0u64;
            let start = Instant::now();
            // Bounded: at most 60 s even if nobody stops it.
            let end = start + Duration::from_secs(60);
            let mut blocks = 0u64;
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                // Paced: no more than `rate` blocks per second since the start.
                if blocks as f64 >= start.elapsed().as_secs_f64() * f64::from(rate) {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                }
                blocks += 1;
                gen.fill(&mut buf);
                sock.write_all(&buf)
                    .map_err(|e| format!("send after {sent} bytes: {e}"))?;
                sent += buf.len() as u64;
            }
            sock.shutdown(std::net::Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            let mut answer = String::new();
            sock.read_to_string(&mut answer)
                .map_err(|e| format!("read answer: {e}"))?;
            Ok((sent, answer.trim().to_owned()))
        });
        Self { stop, handle }
    }

    fn finish(self) -> (u64, String) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .expect("sender thread")
            .unwrap_or_else(|e| panic!("TCP transfer failed: {e}"))
    }
}

/// UDP requests from a fixed container port every 100 ms until stopped; every answer must
/// come, and the external address the server saw is recorded.
struct UdpLoop {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u32, Vec<SocketAddrV4>)>,
}

impl UdpLoop {
    fn start(ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_owned();
        let handle = thread::spawn(move || {
            let (mut sent, mut seen) = (0u32, Vec::new());
            let end = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                sent += 1;
                let answer = udp_request_from(
                    &ns,
                    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, UDP_SPORT),
                    SocketAddrV4::new(REMOTE, UDP_PORT),
                    format!("req {sent}").into_bytes(),
                );
                if let Some(peer) = answer.as_deref().and_then(echo_peer) {
                    seen.push(peer);
                }
                thread::sleep(Duration::from_millis(100));
            }
            (sent, seen)
        });
        Self { stop, handle }
    }

    /// (requests, external addresses seen in the answers).
    fn finish(self) -> (u32, Vec<SocketAddrV4>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("udp thread")
    }
}

/// How the first daemon goes away.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill9,
    KeepSigint,
}

/// A TCP transfer and a UDP exchange run across the loader going away and a new one
/// adopting the pinned state: no byte lost or corrupted, every UDP answer comes from the
/// same external port, the table keeps its entries (same external ports), the counters go
/// on, and the programs on the uplink are replaced (new ids) under the running transfer.
fn survive_restart(n: u8, how: Stop) {
    let lab = Lab::up(spec(n));
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let c1 = lab.spec.containers[0].clone();
    let _pins = PinGuard(host.clone());
    let dir = pin_dir(&host);

    let mut args = UP_ARGS.to_vec();
    if how == Stop::KeepSigint {
        args.push("--keep");
    }
    let first = Daemon::start(&host, &args);
    assert!(
        first.ready_line.contains("adopted=false"),
        "{}",
        first.ready_line
    );
    let sink = tcp_sink(&wan, SocketAddrV4::new(REMOTE, TCP_PORT), 1, SEED);
    let _echo = udp_echo(
        &wan,
        SocketAddrV4::new(REMOTE, UDP_PORT),
        Duration::from_secs(40),
    );
    // 160 blocks of 64 KiB a second: 10 MiB/s, 50+ MiB over the test.
    let tcp = PacedTcp::start(&c1.netns, SocketAddrV4::new(REMOTE, TCP_PORT), 160);
    let udp = UdpLoop::start(&c1.netns);
    thread::sleep(Duration::from_millis(1500));

    let before = mappings(&host, c1.addr);
    assert!(
        before.keys().any(|k| k.4 == 6) && before.keys().any(|k| k.4 == 17),
        "expected a TCP and a UDP mapping: {before:?}"
    );
    let new_before = counter(&host, Counter::NewMappings);
    assert!(new_before >= 2, "new_mappings {new_before}");
    let progs_before = programs(&host, "up0");
    assert_eq!(progs_before.len(), 2, "{progs_before:?}");
    for link in ["up0-egress", "up0-ingress", "bnt-rs{n}-v1-ingress"] {
        let link = link.replace("{n}", &n.to_string());
        assert!(
            dir.join("links").join(&link).exists(),
            "link {link} not pinned"
        );
    }

    let pid = first.pid().expect("running");
    match how {
        Stop::Kill9 => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("kill -9");
            let (status, _) = first.stop();
            assert!(!status.success(), "killed");
        }
        Stop::KeepSigint => {
            let (status, rest) = first.stop();
            assert!(status.success(), "{status:?}");
            assert!(
                rest.iter().any(|l| l.contains("pinned state kept")),
                "{rest:?}"
            );
        }
    }
    // Nobody runs the instance, the datapath still does.
    assert!(dir.join("NAT_OUT").exists(), "pins removed");
    let (code, _, stderr) = bpfnat(&["--netns", &host, "conntrack", "list"]);
    assert!(code != 0 && stderr.contains("adopts it"), "{stderr}");
    let translated = counter(&host, Counter::EgressTranslated);
    thread::sleep(Duration::from_millis(1500));
    assert!(
        counter(&host, Counter::EgressTranslated) > translated,
        "nothing translated while the loader was gone"
    );
    assert_eq!(
        mappings(&host, c1.addr),
        before,
        "the table changed without a loader"
    );
    assert_eq!(programs(&host, "up0"), progs_before);

    // The restart adopts: same table, new programs behind the same links.
    let second = Daemon::start(&host, &UP_ARGS);
    assert!(
        second.ready_line.contains("adopted=true"),
        "{}",
        second.ready_line
    );
    let progs_after = programs(&host, "up0");
    assert_eq!(progs_after.len(), 2, "{progs_after:?}");
    for ((hook, name, id), (hook0, name0, id0)) in progs_after.iter().zip(&progs_before) {
        assert_eq!((hook, name), (hook0, name0));
        assert_ne!(id, id0, "{hook} program not replaced");
    }
    thread::sleep(Duration::from_millis(1500));
    let after = mappings(&host, c1.addr);
    for (key, ext) in &before {
        assert_eq!(
            after.get(key),
            Some(ext),
            "mapping {key:?} lost or moved: {after:?}"
        );
    }
    assert!(
        counter(&host, Counter::NewMappings) >= new_before,
        "counters reset"
    );

    let (sent, answer) = tcp.finish();
    let seen = sink.join().expect("sink");
    assert_eq!(seen.len(), 1);
    assert!(sent > 30 << 20, "only {sent} bytes sent");
    assert_eq!(seen[0].bytes, sent, "bytes lost");
    assert!(seen[0].intact, "stream corrupted");
    assert!(answer.starts_with("OK "), "{answer}");
    let (requests, peers) = udp.finish();
    assert_eq!(peers.len() as u32, requests, "UDP answers missing");
    let ext = SocketAddrV4::new(lab.spec.uplink_addr, 0);
    assert!(
        peers.windows(2).all(|w| w[0] == w[1]) && peers[0].ip() == ext.ip(),
        "UDP external address changed: {peers:?}"
    );
    // Counted exactly once per flow: the restart made no new mapping for them.
    assert_eq!(counter(&host, Counter::NewMappings), new_before);

    // A normal stop (no --keep) removes everything.
    let (status, _) = second.stop();
    assert!(status.success());
    assert!(!dir.exists(), "{} left after SIGINT", dir.display());
    assert!(programs(&host, "up0").is_empty(), "programs left on up0");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn kill9_then_restart_adopts_the_running_datapath() {
    let _alone = require_root_alone();
    survive_restart(1, Stop::Kill9);
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn keep_then_restart_adopts_the_running_datapath() {
    let _alone = require_root_alone();
    survive_restart(2, Stop::KeepSigint);
}

/// bpftool shows the pinned table with field names; `down` is refused while running, a
/// misfit table size is refused without touching the state, and `down` after `--keep`
/// removes links and maps.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn btf_dump_misfit_and_down() {
    let _alone = require_root_alone();
    let lab = Lab::up(spec(3));
    let host = lab.spec.host_netns.clone();
    let c1 = lab.spec.containers[0].clone();
    let _pins = PinGuard(host.clone());
    let dir = pin_dir(&host);
    let mut args = UP_ARGS.to_vec();
    args.push("--keep");
    let daemon = Daemon::start(&host, &args);
    let _echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(REMOTE, UDP_PORT),
        Duration::from_secs(30),
    );
    let udp = || {
        udp_request_from(
            &c1.netns,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, UDP_SPORT),
            SocketAddrV4::new(REMOTE, UDP_PORT),
            b"x".to_vec(),
        )
        .as_deref()
        .and_then(echo_peer)
    };
    let peer = udp().expect("UDP through the NAT");

    let nat_out = dir.join("NAT_OUT");
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(&nat_out)
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for field in [
        "\"src_addr\"",
        "\"dst_port\"",
        "\"last_seen_ns\"",
        "\"port\"",
    ] {
        assert!(
            text.contains(field),
            "{field} not in bpftool's dump:\n{text}"
        );
    }

    assert_one_line_error(
        &["--instance", &host, "down"],
        &["is running", "stop it first (SIGINT)"],
    );
    assert!(dir.join("NAT_OUT").exists());

    let (status, _) = daemon.stop();
    assert!(status.success());
    assert!(dir.join("links").join("up0-egress").exists());
    assert_eq!(
        programs(&host, "up0").len(),
        2,
        "the datapath stopped with --keep"
    );
    assert_eq!(udp(), Some(peer), "not translated after the --keep stop");

    // Another table size does not fit the pinned tables: refused, state untouched.
    let mut misfit = vec!["--netns", host.as_str(), "up"];
    misfit.extend_from_slice(&UP_ARGS);
    misfit.extend_from_slice(&["--table-size", "1024"]);
    assert_one_line_error(&misfit, &["NAT_OUT", "down"]);
    assert!(dir.join("OWNER").exists() && dir.join("links").join("up0-egress").exists());
    assert_eq!(udp(), Some(peer), "the refused start broke the datapath");

    let (code, stdout, stderr) = bpfnat(&["--instance", &host, "down"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("removed instance"), "{stdout}");
    assert!(!dir.exists(), "{} left by down", dir.display());
    assert!(programs(&host, "up0").is_empty(), "programs left on up0");
    let port = "bnt-rs3-v1";
    assert!(programs(&host, port).is_empty(), "programs left on {port}");
    assert_one_line_error(&["--instance", &host, "down"], &["has no pinned state"]);
}
