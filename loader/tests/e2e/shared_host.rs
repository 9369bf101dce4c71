//! A real host is shared (issue 13): other tools attach their own tc programs and filters to
//! the same devices. Each test names the item of issue 13 it covers.

use crate::support::require_root;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use crate::support::e2e::*;

fn lab(prefix: &str, n: u8) -> Lab {
    Lab::up(crate::support::topo::test_lab(
        prefix,
        [10, 86, n],
        1,
        Ipv4Addr::new(192, 0, 2, 20 + n),
        Ipv4Addr::new(192, 0, 2, 30 + n),
        Ipv4Addr::new(198, 51, 100, 86),
    ))
}

fn run(ns: &str, args: &[&str]) {
    let (ok, out) = ns_exec(ns, args);
    assert!(ok, "{}: {out}", args.join(" "));
}

/// Packets a device sent, from its counters (read in its namespace).
fn tx_packets(ns: &str, dev: &str) -> u64 {
    let (ok, out) = ns_exec(
        ns,
        &[
            "cat",
            &format!("/sys/class/net/{dev}/statistics/tx_packets"),
        ],
    );
    assert!(ok, "reading the counters of {dev}");
    out.trim().parse().expect("a packet count")
}

/// Item 6: what bpfnat lets through goes on to the programs and filters attached after it
/// (TCX_NEXT, not a final TC_ACT_OK). A tc filter added on the uplink after `bpfnat up`
/// mirrors every packet it sees to a veth, whose counters tell what it saw: the
/// host's own traffic, which bpfnat passes untouched, and a container's, which it translates
/// and lets go on, must both reach the filter, on egress and on ingress.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item6_tc_filters_after_bpfnat_see_the_traffic_it_lets_through() {
    let _slot = require_root();
    let lab = lab("bnt-sh-tc", 1);
    let host = lab.spec.host_netns.clone();
    let c = lab.spec.containers[0].netns.clone();
    let remote = lab.spec.remote_server;
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);

    // The monitor: two veth pairs (no dummy driver in this kernel) and two u32 filters (match
    // everything) with a mirror action, on the uplink's egress and ingress, added after
    // bpfnat's TCX programs.
    for dev in ["mon-out", "mon-in"] {
        let peer = format!("{dev}-p");
        run(
            &host,
            &[
                "ip", "link", "add", dev, "type", "veth", "peer", "name", &peer,
            ],
        );
        run(&host, &["ip", "link", "set", dev, "up"]);
        run(&host, &["ip", "link", "set", &peer, "up"]);
    }
    run(&host, &["tc", "qdisc", "add", "dev", "up0", "clsact"]);
    for (hook, dev) in [("egress", "mon-out"), ("ingress", "mon-in")] {
        run(
            &host,
            &[
                "tc", "filter", "add", "dev", "up0", hook, "protocol", "ip", "u32", "match", "u32",
                "0", "0", "action", "mirred", "egress", "mirror", "dev", dev,
            ],
        );
    }

    let (out0, in0) = (tx_packets(&host, "mon-out"), tx_packets(&host, "mon-in"));
    // The host's own pings: untouched by bpfnat both ways.
    assert!(ping(&host, remote), "the host reaches {remote}");
    let (out1, in1) = (tx_packets(&host, "mon-out"), tx_packets(&host, "mon-in"));
    assert!(
        out1 - out0 >= 2 && in1 - in0 >= 2,
        "the filters saw {} of the host's 2 pings out and {} replies in",
        out1 - out0,
        in1 - in0
    );
    // A container's pings: translated on the way out and let go on (the replies come back
    // translated and are redirected to the container, a final verdict of their own).
    assert!(
        ping(&c, remote),
        "the container reaches {remote} through the NAT"
    );
    let out2 = tx_packets(&host, "mon-out");
    assert!(
        out2 - out1 >= 2,
        "the egress filter saw {} of the container's 2 translated pings",
        out2 - out1
    );
}

/// `bpfnat` under `ip netns exec NAME`, with its own mount namespace and a fresh /sys.
fn bpfnat_in(ns: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_bpfnat")])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("ip netns exec bpfnat");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Item 10: `ip netns exec NAME bpfnat ...` and `bpfnat --netns NAME ...` find the same
/// instance. An `up` started under `ip netns exec` pins its state in the host's bpffs (where
/// a restart can adopt it and other commands find it), not in a private one that dies with
/// it; `status`, `stats` and `conntrack` under `ip netns exec` see an instance started with
/// `--netns`, and the other way round.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item10_ip_netns_exec_and_netns_flag_see_the_same_instance() {
    let _slot = require_root();
    let lab = lab("bnt-sh-ne", 2);
    let host = lab.spec.host_netns.clone();
    let c = lab.spec.containers[0].netns.clone();
    let remote = lab.spec.remote_server;
    let pins = std::path::Path::new("/sys/fs/bpf/bpfnat").join(&host);

    // Started under `ip netns exec`: pinned where the host sees it, under the namespace's name.
    let daemon = Daemon::start_under_ip_netns_exec(&host, &["--uplink", "up0", "--bridge", "br0"]);
    assert!(pins.join("OWNER").exists(), "no pins at {}", pins.display());
    assert!(ping(&c, remote), "the container reaches {remote}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bpfnat"))
        .args(["--netns", &host, "--json", "stats"])
        .output()
        .expect("bpfnat stats");
    assert!(
        out.status.success(),
        "--netns does not see it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, stdout, stderr) = bpfnat_in(&host, &["--json", "conntrack", "list"]);
    assert!(
        ok && stdout.contains(&remote.to_string()),
        "{stdout}{stderr}"
    );
    let (status, _) = daemon.stop();
    assert!(status.success(), "{status}");
    assert!(!pins.exists(), "{} left behind", pins.display());

    // Started with `--netns`: `ip netns exec` commands see it.
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let (ok, stdout, stderr) = bpfnat_in(&host, &["status"]);
    assert!(
        ok && stdout.contains(&format!("instance {host}")),
        "{stdout}{stderr}"
    );
    let (ok, stdout, stderr) = bpfnat_in(&host, &["--json", "stats"]);
    assert!(ok && stdout.contains("egress_packets"), "{stdout}{stderr}");
}

/// Item 11: `trace --pcap` keeps its capture when stopped by SIGTERM, as `timeout` (or
/// systemd) stops it, started with `--netns` or under `ip netns exec`: the file holds the
/// packets, and tcpdump reads them.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item11_trace_pcap_survives_sigterm() {
    let _slot = require_root();
    let lab = lab("bnt-sh-pc", 3);
    let host = lab.spec.host_netns.clone();
    let c = lab.spec.containers[0].netns.clone();
    let remote = lab.spec.remote_server;
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    let bin = env!("CARGO_BIN_EXE_bpfnat");
    let dir = std::env::temp_dir();
    for (how, prefix) in [
        (
            "--netns",
            vec!["timeout", "-s", "TERM", "3", bin, "--netns", host.as_str()],
        ),
        (
            "ip netns exec",
            vec![
                "timeout",
                "-s",
                "TERM",
                "3",
                "ip",
                "netns",
                "exec",
                host.as_str(),
                bin,
            ],
        ),
    ] {
        let pcap = dir.join(format!(
            "bnt-sh-pc-{}-{}.pcap",
            std::process::id(),
            how.len()
        ));
        let mut args = prefix.clone();
        let pcap_arg = pcap.to_str().unwrap().to_owned();
        args.extend(["trace", "--proto", "icmp", "--pcap", pcap_arg.as_str()]);
        let tracer = std::process::Command::new(args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("timeout bpfnat trace");
        std::thread::sleep(std::time::Duration::from_millis(800));
        assert!(ping(&c, remote), "the container reaches {remote}");
        let out = tracer.wait_with_output().expect("trace");
        // 124: timeout stopped it (with SIGTERM); the tracer itself exits cleanly.
        assert_eq!(
            out.status.code(),
            Some(124),
            "{how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = std::process::Command::new("tcpdump")
            .args(["-nn", "-r", pcap_arg.as_str()])
            .output()
            .expect("tcpdump");
        let _ = std::fs::remove_file(&pcap);
        let text = String::from_utf8_lossy(&read.stdout);
        assert!(
            read.status.success() && text.matches("ICMP echo").count() >= 2,
            "{how}: the capture after SIGTERM holds: {text}{}",
            String::from_utf8_lossy(&read.stderr)
        );
    }
}

/// Item 12 (a loader corner): a table adopted after the uplink's address changed no longer
/// translates to the old address. Its mappings to the old address are forgotten at adoption,
/// the way a change under a running daemon forgets them, and new flows get the new address.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item12_adopting_after_an_address_change_forgets_the_old_address() {
    let _slot = require_root();
    let lab = lab("bnt-sh-ad", 4);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let c = lab.spec.containers[0].netns.clone();
    let remote = lab.spec.remote_server;
    let (old, new) = (lab.spec.uplink_addr, Ipv4Addr::new(192, 0, 2, 124));
    let server = SocketAddrV4::new(remote, 7500);
    let up = ["--uplink", "up0", "--bridge", "br0"];

    // A UDP flow through a daemon that leaves its datapath pinned (--keep).
    let daemon = Daemon::start(&host, &[&up[..], &["--keep"]].concat());
    let echo = udp_echo(&wan, server, Duration::from_secs(3));
    let local = SocketAddrV4::new(lab.spec.containers[0].addr, 41500);
    assert!(udp_request_from(&c, local, server, b"a".to_vec()).is_some());
    assert_eq!(
        echo.join().unwrap(),
        [std::net::SocketAddr::from((old, 41500))]
    );
    let (status, _) = daemon.stop();
    assert!(status.success());

    // The uplink gets another address (same subnet, same gateway) while no daemon runs.
    let gateway = lab.spec.wan_addr.to_string();
    let cidr = format!("{new}/24");
    run(&host, &["ip", "addr", "flush", "dev", "up0"]);
    run(&host, &["ip", "addr", "add", &cidr, "dev", "up0"]);
    run(
        &host,
        &["ip", "route", "replace", "default", "via", &gateway],
    );

    let daemon = Daemon::start(&host, &up);
    assert!(
        daemon.ready_line.contains("adopted=true"),
        "{}",
        daemon.ready_line
    );
    let stale: Vec<_> = crate::support::cli::conntrack_json(&host, &[])
        .into_iter()
        .filter(|c| c.to_string().contains(&old.to_string()))
        .collect();
    assert!(
        stale.is_empty(),
        "mappings to the old address kept: {stale:?}"
    );
    // The same flow again: it leaves with the new address and its answer comes back.
    let echo = udp_echo(&wan, server, Duration::from_secs(3));
    assert!(udp_request_from(&c, local, server, b"b".to_vec()).is_some());
    assert_eq!(
        echo.join().unwrap(),
        [std::net::SocketAddr::from((new, 41500))]
    );
}

/// Item 12: a published port kept across a restart into a bridge that has become internal is
/// dropped: the restarted daemon unpublishes it (with a warning), and connections from
/// outside to it get nowhere.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item12_publish_into_a_bridge_now_internal_does_not_survive_adoption() {
    let _slot = require_root();
    let lab = lab("bnt-sh-in", 5);
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let container = lab.spec.containers[0].clone();
    let ext = lab.spec.uplink_addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = echo_server(
        &container.netns,
        SocketAddrV4::new(container.addr, 80),
        stop.clone(),
    );
    let publish = format!("8084:{}:80/tcp", container.addr);
    let published = SocketAddrV4::new(ext, 8084);
    let reach = || {
        spawn_in(&wan, move || {
            std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::V4(published),
                Duration::from_secs(2),
            )
            .is_ok()
        })
        .join()
        .expect("client")
    };
    let daemon = Daemon::start(
        &host,
        &["--uplink", "up0", "--bridge", "br0", "--publish", &publish],
    );
    assert!(reach(), "published while the bridge is not internal");
    let _ = daemon.stop();
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0:internal"]);
    let (ok, list, _) = bpfnat_in(&host, &["publish", "list"]);
    assert!(ok && !list.contains("8084"), "still published: {list}");
    assert!(!reach(), "the internal container is reachable from outside");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().ok();
}

/// Item 12: interfaces whose names differ only by `.` and `_` (`p.1`, `p_1`) each keep their
/// own pinned link and program (a shared pin let one replace the other's program).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item12_dotted_and_underscored_port_names_keep_their_own_programs() {
    let _slot = require_root();
    let lab = Lab::up(crate::support::topo::test_lab(
        "bnt-sh-ln",
        [10, 86, 6],
        2,
        Ipv4Addr::new(192, 0, 2, 26),
        Ipv4Addr::new(192, 0, 2, 36),
        Ipv4Addr::new(198, 51, 100, 86),
    ));
    let host = lab.spec.host_netns.clone();
    let remote = lab.spec.remote_server;
    for (container, name) in lab.spec.containers.iter().zip(["bnt-ln.1", "bnt-ln_1"]) {
        run(&host, &["ip", "link", "set", &container.host_veth, "down"]);
        run(
            &host,
            &["ip", "link", "set", &container.host_veth, "name", name],
        );
        run(&host, &["ip", "link", "set", name, "up"]);
    }
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);
    for name in ["bnt-ln.1", "bnt-ln_1"] {
        assert!(
            tc_programs(&host, name).contains("port_ingress"),
            "{name} has its own program: {:?}",
            tc_programs(&host, name)
        );
    }
    for c in &lab.spec.containers {
        assert!(ping(&c.netns, remote), "{} reaches {remote}", c.netns);
    }
}
