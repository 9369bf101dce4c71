//! `bpfnat conntrack`, `bpfnat stats`, pinned state, uplink address changes and the config
//! file, with real traffic in namespaces. Each test builds its own lab (`bnt-ct-*`,
//! containers 10.95.N.0/24, uplink 192.0.2.128/25 addresses, remote 198.51.100.95).

use crate::support::require_root;

use crate::support::cli::{bpfnat, bpfnat_ok, conntrack_json, counter, stats_json};
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use crate::support::e2e::{
    echo_peer, ns_exec, tcp_send, tcp_sink, udp_echo, udp_request_from, Daemon, HeldTcp, Lab,
};
use bpfnat::{host::lab::LabSpec, host::netns};
use serde_json::Value;

const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 95);

/// A lab for test number `n`: containers `<prefix>-c1` (10.95.n.2) and `<prefix>-c2`
/// (10.95.n.3) behind `br0` in `<prefix>-h`, uplink `up0` 192.0.2.(128+n)/24 to `wan0`
/// 192.0.2.(250-n) in `<prefix>-w`, which holds the remote server 198.51.100.95.
fn spec(prefix: &str, n: u8) -> LabSpec {
    crate::support::topo::test_lab(
        prefix,
        [10, 95, n],
        2,
        uplink_addr(n),
        Ipv4Addr::new(192, 0, 2, 250 - n),
        REMOTE,
    )
}

fn uplink_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 128 + n)
}

/// The CLI must fail with exactly one line on stderr containing `expected`.
fn assert_one_line_error(args: &[&str], expected: &str) {
    let (code, _, stderr) = bpfnat(args);
    assert_ne!(code, 0, "{args:?} should fail");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line:\n{stderr}");
    assert!(
        lines[0].starts_with("bpfnat: error: ") && lines[0].contains(expected),
        "{args:?}: expected {expected:?} in {stderr}"
    );
}

/// The entry of a UDP/TCP flow by protocol and original source port.
fn find<'a>(conns: &'a [Value], proto: &str, sport: u16) -> Option<&'a Value> {
    conns
        .iter()
        .find(|c| c["proto"] == proto && c["original"]["sport"] == sport)
}

/// Poll `cond` every 200 ms for at most `limit`; true once it holds.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// UDP request from `ns` port `sport` to the remote echo server on `port`; the external
/// address/port the server saw.
fn udp_via_nat(ns: &str, sport: u16, port: u16) -> SocketAddrV4 {
    let answer = udp_request_from(
        ns,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, sport),
        SocketAddrV4::new(REMOTE, port),
        b"hello".to_vec(),
    )
    .unwrap_or_else(|| panic!("{ns}: no UDP answer from port {sport}"));
    echo_peer(&answer).expect("echo answer names the peer")
}

fn pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/bpfnat").join(instance)
}

/// list --json: both tuples, per-direction accounting, seconds left, TCP state; expiry on
/// time and reuse of the freed port.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn list_shows_tuples_state_and_expires_on_time() {
    let _slot = require_root();
    let lab = Lab::up(spec("bnt-ct-a", 1));
    let host = lab.spec.host_netns.clone();
    let (c1, c2) = (
        lab.spec.containers[0].clone(),
        lab.spec.containers[1].clone(),
    );
    let _daemon = Daemon::start(
        &host,
        &[
            "--uplink",
            "up0",
            "--bridge",
            "br0",
            "--timeout",
            "udp_one_way=3",
            "--timeout",
            "udp_both_ways=4",
            "--sweep-interval",
            "1",
        ],
    );
    let _echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(REMOTE, 7001),
        Duration::from_secs(40),
    );

    let seen = udp_via_nat(&c1.netns, 40001, 7001);
    let udp_sent_at = Instant::now();
    assert_eq!(seen, SocketAddrV4::new(uplink_addr(1), 40001));
    let tcp = HeldTcp::open(
        &lab.spec.wan_netns,
        &c1.netns,
        SocketAddrV4::new(REMOTE, 7002),
    );

    let conns = conntrack_json(&host, &[]);
    let udp = find(&conns, "udp", 40001).unwrap_or_else(|| panic!("no UDP flow in {conns:?}"));
    assert_eq!(udp["proto_num"], 17);
    assert_eq!(udp["original"]["src"], c1.addr.to_string());
    assert_eq!(udp["original"]["dst"], REMOTE.to_string());
    assert_eq!(udp["original"]["dport"], 7001);
    assert_eq!(udp["reply"]["src"], REMOTE.to_string());
    assert_eq!(udp["reply"]["dst"], uplink_addr(1).to_string());
    assert_eq!(udp["reply"]["sport"], 7001);
    assert_eq!(udp["reply"]["dport"], 40001);
    for dir in ["original", "reply"] {
        for field in ["packets", "bytes"] {
            assert!(
                udp[dir][field].as_u64().unwrap() > 0,
                "{dir} {field} in {udp}"
            );
        }
    }
    assert_eq!(udp["timeout"], 4, "replied UDP uses udp_both_ways: {udp}");
    assert!(udp["seconds_left"].as_u64().unwrap() <= 4, "{udp}");
    assert_eq!(udp["state"], Value::Null);

    let tcp_port = tcp.local.port();
    let t = find(&conns, "tcp", tcp_port).unwrap_or_else(|| panic!("no TCP flow in {conns:?}"));
    assert_eq!(t["state"], "ESTABLISHED", "{t}");
    assert_eq!(t["original"]["dport"], 7002);
    assert_eq!(t["reply"]["dst"], uplink_addr(1).to_string());

    // The conntrack-like text form.
    let (code, text, summary) = bpfnat(&["--netns", &host, "conntrack", "list"]);
    assert_eq!(code, 0, "{summary}");
    println!("conntrack list:\n{text}{summary}");
    assert!(
        text.lines().any(|l| l.starts_with("udp      17 ")
            && l.contains(&format!(
                "src={} dst={REMOTE} sport=40001 dport=7001",
                c1.addr
            ))
            && l.contains(&format!(
                "src={REMOTE} dst={} sport=7001 dport=40001",
                uplink_addr(1)
            ))),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("tcp      6 ") && l.contains(" ESTABLISHED src=")),
        "{text}"
    );
    assert!(summary.contains("2 flow entries"), "{summary}");
    // Filters on the original tuple.
    let only_tcp = conntrack_json(&host, &["--proto", "tcp"]);
    assert_eq!(only_tcp.len(), 1, "{only_tcp:?}");
    let by_src = conntrack_json(&host, &["--src", &format!("{}/32", c2.addr)]);
    assert!(by_src.is_empty(), "{by_src:?}");
    assert_eq!(conntrack_json(&host, &["--dport", "7001"]).len(), 1);
    tcp.close();

    // Expiry: idle for more than 4 s, then gone at the next sweep (every second).
    assert!(
        wait_for(Duration::from_secs(15), || find(
            &conntrack_json(&host, &[]),
            "udp",
            40001
        )
        .is_none()),
        "UDP flow never expired"
    );
    // Not before its 4 s (udp_one_way, 3 s, would be wrong: it had a reply), and within the
    // timeout + one sweep interval + polling slack. The lower bound leaves room for the time
    // between the last packet and `udp_sent_at`.
    let gone_after = udp_sent_at.elapsed();
    assert!(
        gone_after >= Duration::from_millis(3500) && gone_after <= Duration::from_secs(10),
        "expired after {gone_after:?}, timeout 4 s + sweep 1 s"
    );

    // The same source port again: a new mapping with the same external port.
    let before = counter(&stats_json(&host), "new_mappings");
    assert_eq!(
        udp_via_nat(&c1.netns, 40001, 7001),
        SocketAddrV4::new(uplink_addr(1), 40001)
    );
    assert_eq!(counter(&stats_json(&host), "new_mappings"), before + 1);
    assert!(find(&conntrack_json(&host, &[]), "udp", 40001).is_some());
    // While that mapping lives, the port is not handed to another container.
    let other = udp_via_nat(&c2.netns, 40001, 7001);
    assert_eq!(*other.ip(), uplink_addr(1));
    assert_ne!(other.port(), 40001, "a live mapping's port was given away");
}

/// flush empties the table (and new traffic works); delete removes only what matches.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn flush_and_delete() {
    let _slot = require_root();
    let lab = Lab::up(spec("bnt-ct-f", 2));
    let host = lab.spec.host_netns.clone();
    let c1 = lab.spec.containers[0].netns.clone();
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let _echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(REMOTE, 7003),
        Duration::from_secs(40),
    );
    udp_via_nat(&c1, 41001, 7003);
    udp_via_nat(&c1, 41002, 7003);
    assert!(crate::support::e2e::ping(&c1, REMOTE));
    let conns = conntrack_json(&host, &[]);
    assert_eq!(conns.len(), 3, "{conns:?}");
    let icmp = conns
        .iter()
        .find(|c| c["proto"] == "icmp")
        .expect("ICMP flow");
    assert_eq!(icmp["original"]["type"], 8);
    assert_eq!(icmp["reply"]["type"], 0);

    assert_one_line_error(
        &["--netns", &host, "conntrack", "delete"],
        "needs at least one filter",
    );
    let out = bpfnat_ok(&[
        "--netns",
        &host,
        "conntrack",
        "delete",
        "--proto",
        "udp",
        "--sport",
        "41001",
        "--json",
    ]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["deleted"], 1);
    let conns = conntrack_json(&host, &[]);
    assert!(find(&conns, "udp", 41001).is_none(), "{conns:?}");
    assert!(find(&conns, "udp", 41002).is_some(), "{conns:?}");
    assert_eq!(conns.len(), 2, "{conns:?}");
    let stats = stats_json(&host);
    assert_eq!(stats["table"]["nat_out"], 2, "{stats}");
    assert_eq!(stats["table"]["nat_in"], 2, "both halves deleted: {stats}");

    let out = bpfnat_ok(&["--netns", &host, "conntrack", "flush"]);
    assert!(out.contains("2 flow entries have been deleted"), "{out}");
    assert!(conntrack_json(&host, &[]).is_empty());
    let stats = stats_json(&host);
    assert_eq!(stats["table"]["nat_out"], 0, "{stats}");
    assert_eq!(stats["table"]["nat_in"], 0, "{stats}");

    // Traffic after the flush gets new mappings and works.
    assert_eq!(
        udp_via_nat(&c1, 41001, 7003),
        SocketAddrV4::new(uplink_addr(2), 41001)
    );
    assert!(crate::support::e2e::ping(&c1, REMOTE));
    assert_eq!(conntrack_json(&host, &[]).len(), 2);
}

/// stats --json counts what was sent: N pings and M TCP connections.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn stats_count_pings_and_connections() {
    let _slot = require_root();
    const N: u64 = 5;
    const M: u64 = 3;
    let lab = Lab::up(spec("bnt-ct-s", 3));
    let host = lab.spec.host_netns.clone();
    let c1 = lab.spec.containers[0].netns.clone();
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let start = stats_json(&host);
    for name in ["egress_translated", "ingress_translated", "new_mappings"] {
        assert_eq!(counter(&start, name), 0, "{name} at start: {start}");
    }
    assert_eq!(start["table"]["max_entries"], 262_144);

    let (ok, out) = ns_exec(
        &c1,
        &[
            "ping",
            "-c",
            &N.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            "-q",
            &REMOTE.to_string(),
        ],
    );
    assert!(ok && out.contains(&format!("{N} received")), "{out}");
    let sink = tcp_sink(
        &lab.spec.wan_netns,
        SocketAddrV4::new(REMOTE, 7004),
        M as usize,
        9,
    );
    for _ in 0..M {
        let answer = tcp_send(&c1, None, SocketAddrV4::new(REMOTE, 7004), 20_000, 9)
            .join()
            .unwrap()
            .expect("TCP through the NAT");
        assert!(
            answer.starts_with(&format!("OK {}:", uplink_addr(3))),
            "{answer}"
        );
    }
    let seen = sink.join().unwrap();
    assert!(
        seen.iter().all(|s| s.intact && s.bytes == 20_000),
        "{seen:?}"
    );

    let stats = stats_json(&host);
    let conns = conntrack_json(&host, &[]);
    println!("stats: {stats}");
    // One ICMP mapping (one echo id) and one per TCP connection.
    assert_eq!(counter(&stats, "new_mappings"), 1 + M, "{stats}");
    assert_eq!(stats["table"]["nat_out"], 1 + M);
    assert_eq!(stats["table"]["nat_in"], 1 + M);
    let icmp = conns
        .iter()
        .find(|c| c["proto"] == "icmp")
        .expect("ICMP flow");
    assert_eq!(icmp["original"]["packets"], N, "{icmp}");
    assert_eq!(icmp["reply"]["packets"], N, "{icmp}");
    // Every translated packet is accounted on its mapping, and nothing else was translated.
    let sum = |dir: &str| -> u64 {
        conns
            .iter()
            .map(|c| c[dir]["packets"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(counter(&stats, "egress_translated"), sum("original"));
    assert_eq!(counter(&stats, "ingress_translated"), sum("reply"));
    // Each TCP connection: at least SYN, ACK (+ data) and FIN out; SYN-ACK and FIN back.
    assert!(counter(&stats, "egress_translated") >= N + 3 * M, "{stats}");
    assert!(
        counter(&stats, "ingress_translated") >= N + 2 * M,
        "{stats}"
    );
    for (name, v) in stats["counters"].as_object().unwrap() {
        if name.starts_with("drop_") {
            assert_eq!(v, 0, "{name}: {stats}");
        }
    }
    let text = bpfnat_ok(&["--netns", &host, "stats"]);
    println!("stats:\n{text}");
    println!(
        "conntrack list:\n{}",
        bpfnat_ok(&["--netns", &host, "conntrack", "list"])
    );
    assert!(
        text.contains(&format!("nat_out {} / 262144", 1 + M)),
        "{text}"
    );
}

/// The uplink address changes while running: new flows leave with the new address, the old
/// mappings are forgotten; without an address nothing is translated.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn address_change_moves_new_flows_to_the_new_address() {
    let _slot = require_root();
    let lab = Lab::up(spec("bnt-ct-ad", 4));
    let host = lab.spec.host_netns.clone();
    let c1 = lab.spec.containers[0].netns.clone();
    let (old, new) = (uplink_addr(4), Ipv4Addr::new(192, 0, 2, 164));
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let _echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(REMOTE, 7005),
        Duration::from_secs(40),
    );
    assert_eq!(*udp_via_nat(&c1, 42001, 7005).ip(), old);
    let conns = conntrack_json(&host, &[]);
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["reply"]["dst"], old.to_string());

    // Same /24 as wan0, so it is reachable as it is; promote the new address when the old
    // primary goes, and keep the default route.
    netns::sysctl(&host, "net/ipv4/conf/up0/promote_secondaries", "1").unwrap();
    let wan = lab.spec.wan_addr;
    netns::with_netlink(&host, move |h| async move {
        netns::add_address(&h, "up0", new.into(), 24).await?;
        netns::delete_address(&h, "up0", old.into(), 24).await?;
        netns::replace_default_route_v4(&h, wan).await
    })
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || stats_json(&host)
            ["external_addr"]
            == new.to_string()),
        "the daemon did not pick up {new}"
    );
    let conns = conntrack_json(&host, &[]);
    assert!(
        conns.iter().all(|c| c["reply"]["dst"] != old.to_string()),
        "old mappings remain: {conns:?}"
    );

    let seen = udp_via_nat(&c1, 42001, 7005);
    assert_eq!(*seen.ip(), new, "the server saw {seen}");
    let conns = conntrack_json(&host, &[]);
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0]["reply"]["dst"], new.to_string());
    assert_eq!(conns[0]["external_addr"], new.to_string());

    // No address at all: nothing is translated and the table is emptied.
    netns::with_netlink(&host, move |h| async move {
        netns::delete_address(&h, "up0", new.into(), 24).await
    })
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || stats_json(&host)
            ["external_addr"]
            .is_null()),
        "the daemon did not notice the address went away"
    );
    assert!(conntrack_json(&host, &[]).is_empty());
}

/// Pins exist while running, go away on SIGINT; a second `up` on the same instance is
/// refused; pins of a killed daemon are stale and replaced.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn pins_follow_the_daemon() {
    let _slot = require_root();
    let lab = Lab::up(spec("bnt-ct-p", 5));
    let host = lab.spec.host_netns.clone();
    let dir = pin_dir(&host);
    let args = ["--uplink", "up0", "--bridge", "br0"];
    let daemon = Daemon::start(&host, &args);
    assert!(
        daemon.ready_line.contains("instance=bnt-ct-p-h"),
        "{}",
        daemon.ready_line
    );
    for pin in [
        "NAT_OUT",
        "NAT_IN",
        "CONFIG",
        "INTERNAL_NETS",
        "COUNTERS",
        "OWNER",
    ] {
        assert!(
            dir.join(pin).exists(),
            "{pin} not pinned in {}",
            dir.display()
        );
    }
    // The instance by name, without --netns (pins are not per network namespace).
    let out = bpfnat_ok(&["--instance", &host, "stats", "--json"]);
    assert!(out.contains("\"instance\":\"bnt-ct-p-h\""), "{out}");

    let mut second = vec!["--netns", host.as_str(), "up"];
    second.extend_from_slice(&args);
    assert_one_line_error(&second, "instance \"bnt-ct-p-h\" is already running");
    assert!(
        dir.join("NAT_OUT").exists(),
        "the refused start removed the pins"
    );
    assert_one_line_error(
        &["--instance", "bnt-ct-nope", "conntrack", "list"],
        "instance \"bnt-ct-nope\" is not running",
    );
    assert_one_line_error(
        &["--instance", "../x", "conntrack", "list"],
        "bad instance name \"../x\"",
    );

    let (status, _) = daemon.stop();
    assert!(status.success());
    assert!(!dir.exists(), "{} left after SIGINT", dir.display());
    assert_one_line_error(&["--netns", &host, "conntrack", "list"], "is not running");

    // A daemon that dies without cleaning up leaves stale pins: reported, then replaced.
    let killed = Daemon::start(&host, &args);
    let pid = killed.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (status, _) = killed.stop();
    assert!(!status.success());
    assert!(
        dir.join("NAT_OUT").exists(),
        "a killed daemon cannot clean up"
    );
    assert_one_line_error(
        &["--netns", &host, "conntrack", "list"],
        &format!("stale pinned state in {} left by pid {pid}", dir.display()),
    );
    let again = Daemon::start(&host, &args);
    assert!(conntrack_json(&host, &[]).is_empty());
    let (status, _) = again.stop();
    assert!(status.success());
    assert!(!dir.exists());
}

/// A TOML file equivalent to the flags starts the daemon; flags override it; unknown keys
/// and missing interfaces fail with one line.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn config_file() {
    let _slot = require_root();
    let tmp = std::env::temp_dir();
    let good = tmp.join(format!("bnt-ct-cf-{}.toml", std::process::id()));
    let bad = tmp.join(format!("bnt-ct-cf-bad-{}.toml", std::process::id()));
    let no_uplink = tmp.join(format!("bnt-ct-cf-nouplink-{}.toml", std::process::id()));
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _cleanup = Cleanup(vec![good.clone(), bad.clone(), no_uplink.clone()]);
    std::fs::write(
        &good,
        r#"# bpfnat up --config
uplink = "up0"
bridge = "br0"
subnets = ["10.95.6.0/24"]
port_range = "20000-29999"
table_size = 4096
tc_mode = "auto"
sweep_interval = 1

[timeouts]
udp_one_way = 3
udp_both_ways = 7
"#,
    )
    .unwrap();
    std::fs::write(&bad, "uplink = \"up0\"\nbridge = \"br0\"\nbogus = 1\n").unwrap();
    std::fs::write(&no_uplink, "bridge = \"br0\"\n").unwrap();

    assert_one_line_error(
        &["up", "--config", bad.to_str().unwrap()],
        "line 3: unknown field `bogus`",
    );
    assert_one_line_error(
        &["up", "--config", no_uplink.to_str().unwrap()],
        "no uplink",
    );

    let lab = Lab::up(spec("bnt-ct-cf", 6));
    let host = lab.spec.host_netns.clone();
    let c1 = lab.spec.containers[0].netns.clone();
    let _echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(REMOTE, 7006),
        Duration::from_secs(40),
    );
    let daemon = Daemon::start(&host, &["--config", good.to_str().unwrap()]);
    assert!(
        daemon.ready_line.contains("uplink=up0")
            && daemon.ready_line.contains("subnets=10.95.6.0/24"),
        "{}",
        daemon.ready_line
    );
    let seen = udp_via_nat(&c1, 43001, 7006);
    assert_eq!(*seen.ip(), uplink_addr(6));
    assert!(
        (20000..=29999).contains(&seen.port()),
        "port_range ignored: {seen}"
    );
    let conns = conntrack_json(&host, &[]);
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0]["timeout"], 7, "[timeouts] ignored: {:?}", conns[0]);
    assert_eq!(stats_json(&host)["table"]["max_entries"], 4096);
    let (status, _) = daemon.stop();
    assert!(status.success());

    // A flag wins over the file.
    let daemon = Daemon::start(
        &host,
        &["--config", good.to_str().unwrap(), "--table-size", "2048"],
    );
    assert_eq!(stats_json(&host)["table"]["max_entries"], 2048);
    let (status, _) = daemon.stop();
    assert!(status.success());
}
