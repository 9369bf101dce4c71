//! End to end: real programs attached by the real `bpfnat up`, real traffic between
//! namespaces. Each test builds its own topology and removes it, even on failure.

use crate::support::require_root;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use crate::support::{e2e::*, topo::ServerBehindRouter};
use bpfnat::{
    host::lab::{ContainerSpec, LabSpec},
    host::netns,
};

const MB: u64 = 1 << 20;

/// The lab of `bpfnat lab up`: the acceptance scenario.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn lab_masquerades_ping_tcp_udp_and_detaching_breaks_it() {
    let _slot = require_root();
    let lab = Lab::up(LabSpec::default_lab());
    let remote = lab.spec.remote_server;
    let external = lab.spec.uplink_addr;
    assert_no_netfilter_nat(&lab.spec.host_netns);

    // Control: without the datapath nobody outside knows 172.18.0.0/24.
    assert_unreachable(&lab.spec, "before attaching");

    let daemon = Daemon::start(
        &lab.spec.host_netns,
        &["--uplink", "ens5", "--bridge", "docker1"],
    );
    assert!(
        daemon.ready_line.contains("external=203.0.113.2"),
        "{}",
        daemon.ready_line
    );
    assert!(
        daemon.ready_line.contains("subnets=172.18.0.0/24"),
        "{}",
        daemon.ready_line
    );
    assert_no_netfilter_nat(&lab.spec.host_netns);

    for c in &lab.spec.containers {
        assert!(ping(&c.netns, remote), "{} cannot ping {remote}", c.netns);
    }

    // 50 MiB from each container, checked byte for byte; the server sees only the uplink address.
    let sink = tcp_sink(&lab.spec.wan_netns, SocketAddrV4::new(remote, 5001), 2, 7);
    for c in &lab.spec.containers {
        let answer = tcp_send(&c.netns, None, SocketAddrV4::new(remote, 5001), 50 * MB, 7)
            .join()
            .unwrap();
        let answer = answer.unwrap_or_else(|e| panic!("{}: {e}", c.netns));
        assert!(
            answer.starts_with(&format!("OK {external}:")),
            "{}: {answer}",
            c.netns
        );
    }
    for seen in sink.join().unwrap() {
        assert_eq!(seen.peer.ip().to_string(), external.to_string());
        assert_eq!(seen.bytes, 50 * MB);
        assert!(seen.intact, "stream from {} corrupted", seen.peer);
    }

    // UDP request/response.
    let echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(remote, 5353),
        Duration::from_secs(8),
    );
    for c in &lab.spec.containers {
        let answer = udp_request(&c.netns, SocketAddrV4::new(remote, 5353), b"hello".to_vec())
            .unwrap_or_else(|| panic!("{}: no UDP answer", c.netns));
        let answer = String::from_utf8(answer).unwrap();
        assert!(
            answer.starts_with(&format!("{external}:")) && answer.ends_with(" hello"),
            "{answer}"
        );
    }
    let peers = echo.join().unwrap();
    assert!(
        peers
            .iter()
            .all(|p| p.ip().to_string() == external.to_string()),
        "{peers:?}"
    );

    // Two containers, same local port, same remote port, at the same time.
    let sink = tcp_sink(&lab.spec.wan_netns, SocketAddrV4::new(remote, 5002), 2, 11);
    let senders: Vec<_> = lab
        .spec
        .containers
        .iter()
        .map(|c| {
            tcp_send(
                &c.netns,
                Some(SocketAddrV4::new(c.addr, 41000)),
                SocketAddrV4::new(remote, 5002),
                4 * MB,
                11,
            )
        })
        .collect();
    for s in senders {
        s.join().unwrap().expect("same-port connection");
    }
    let seen = sink.join().unwrap();
    assert!(seen
        .iter()
        .all(|s| s.intact && s.bytes == 4 * MB && s.peer.ip().to_string() == external.to_string()));
    assert_ne!(
        seen[0].peer.port(),
        seen[1].peer.port(),
        "two flows share one external port: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.peer.port() == 41000),
        "one flow keeps its original port: {seen:?}"
    );

    // Container to container on the bridge is never translated.
    let (a, b) = (&lab.spec.containers[0], &lab.spec.containers[1]);
    let sink = tcp_sink(&b.netns, SocketAddrV4::new(b.addr, 5003), 1, 3);
    tcp_send(&a.netns, None, SocketAddrV4::new(b.addr, 5003), MB, 3)
        .join()
        .unwrap()
        .expect("bridge traffic");
    assert_eq!(
        sink.join().unwrap()[0].peer.ip().to_string(),
        a.addr.to_string()
    );

    // Stop: programs detached, and the control fails again.
    let (status, rest) = daemon.stop();
    assert!(status.success(), "bpfnat exit: {status}");
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
    assert_eq!(
        tc_programs(&lab.spec.host_netns, "ens5"),
        "",
        "programs left attached"
    );
    assert_unreachable(&lab.spec, "after detaching");
}

/// Ping, TCP and UDP from every container must all fail.
fn assert_unreachable(spec: &LabSpec, when: &str) {
    let remote = spec.remote_server;
    for c in &spec.containers {
        assert!(
            !ping(&c.netns, remote),
            "{when}: {} reached {remote} by ping without NAT",
            c.netns
        );
        let conn = tcp_send(&c.netns, None, SocketAddrV4::new(remote, 5009), 1, 1)
            .join()
            .unwrap();
        assert!(
            conn.is_err(),
            "{when}: {} reached {remote} over TCP without NAT",
            c.netns
        );
        assert!(udp_request(&c.netns, SocketAddrV4::new(remote, 5009), b"x".to_vec()).is_none());
    }
}

/// A topology of the tests' own, with names and addresses unlike the lab, and checksum
/// offloads arranged so that every checksum the NAT touches is verified by a receiver:
///
/// - `bnt-c1` sends with TX offload on (CHECKSUM_PARTIAL through the NAT), `bnt-c2` with it off
///   (full checksums through the NAT);
/// - the server `bnt-srv` sits one hop behind `bnt-wan`, whose interface towards it has TX
///   offload off, so the kernel completes partial checksums there and the server verifies
///   them; the server itself sends full checksums (TX off), verified by the containers;
/// - a second server on `bnt-wan`'s loopback answers with partial checksums; the host-side
///   container veths have TX offload off, so those are completed after the NAT and verified
///   by the containers.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn up_on_other_names_with_partial_and_full_checksums() {
    let _slot = require_root();
    let mut c1 = ContainerSpec::new("bnt-c1", Ipv4Addr::new(10, 99, 0, 2));
    c1.host_veth = "bnt-v1".into();
    let mut c2 = ContainerSpec::new("bnt-c2", Ipv4Addr::new(10, 99, 0, 3));
    c2.host_veth = "bnt-v2".into();
    c2.tx_checksum = false;
    let spec = LabSpec {
        host_netns: "bnt-host".into(),
        wan_netns: "bnt-wan".into(),
        bridge: "br-test".into(),
        bridge_addr: Ipv4Addr::new(10, 99, 0, 1),
        subnet_prefix_len: 24,
        uplink: "up0".into(),
        uplink_addr: Ipv4Addr::new(192, 0, 2, 2),
        wan_iface: "peer0".into(),
        wan_addr: Ipv4Addr::new(192, 0, 2, 1),
        uplink_prefix_len: 24,
        remote_server: Ipv4Addr::new(198, 51, 100, 77),
        containers: vec![c1, c2],
        ipv6: None,
    };
    let lab = Lab::up(spec);
    let _srv = ServerBehindRouter::up("bnt-srv", &lab.spec.wan_netns);
    let server = ServerBehindRouter::ADDR;
    for c in &lab.spec.containers {
        netns::set_tx_checksum(&lab.spec.host_netns, &c.host_veth, false).unwrap();
    }
    assert_no_netfilter_nat(&lab.spec.host_netns);
    assert!(!ping("bnt-c1", server), "server reachable without NAT");

    let daemon = Daemon::start(
        &lab.spec.host_netns,
        &["--uplink", "up0", "--bridge", "br-test"],
    );
    assert!(
        daemon
            .ready_line
            .contains("external=192.0.2.2 subnets=10.99.0.0/24"),
        "{}",
        daemon.ready_line
    );

    // Outbound partial (c1) and full (c2) checksums, verified by the server behind the router.
    let sink = tcp_sink("bnt-srv", SocketAddrV4::new(server, 6001), 2, 21);
    for c in &lab.spec.containers {
        let r = tcp_send(&c.netns, None, SocketAddrV4::new(server, 6001), 20 * MB, 21)
            .join()
            .unwrap();
        assert!(r
            .unwrap_or_else(|e| panic!("{}: {e}", c.netns))
            .starts_with("OK 192.0.2.2:"));
    }
    assert!(sink
        .join()
        .unwrap()
        .iter()
        .all(|s| s.intact && s.bytes == 20 * MB));
    // A remapped port on partial checksums: c2 takes source port 41001 first, so c1's flow
    // from the same port gets another external port, and its port rewrite must leave the
    // partial checksum alone (ports are not in the pseudo-header).
    let sink = tcp_sink("bnt-srv", SocketAddrV4::new(server, 6005), 2, 9);
    for c in [&lab.spec.containers[1], &lab.spec.containers[0]] {
        let r = tcp_send(
            &c.netns,
            Some(SocketAddrV4::new(c.addr, 41001)),
            SocketAddrV4::new(server, 6005),
            2 * MB,
            9,
        );
        r.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{} with a remapped port: {e}", c.netns));
    }
    let seen = sink.join().unwrap();
    assert_eq!(seen[0].peer.port(), 41001, "{seen:?}");
    assert_ne!(seen[1].peer.port(), 41001, "{seen:?}");
    assert!(seen.iter().all(|s| s.intact && s.bytes == 2 * MB));

    // UDP both ways, with a payload large enough to make checksum errors certain to show.
    let echo = udp_echo(
        "bnt-srv",
        SocketAddrV4::new(server, 6002),
        Duration::from_secs(6),
    );
    for c in &lab.spec.containers {
        let payload: Vec<u8> = (0..1200u32).map(|i| (i % 251) as u8).collect();
        let answer = udp_request(&c.netns, SocketAddrV4::new(server, 6002), payload.clone())
            .unwrap_or_else(|| panic!("{}: no UDP answer through the router", c.netns));
        assert!(answer.ends_with(&payload) && answer.starts_with(b"192.0.2.2:"));
    }
    echo.join().unwrap();

    // Inbound partial checksums: the loopback server of bnt-wan.
    let remote = lab.spec.remote_server;
    let sink = tcp_sink(&lab.spec.wan_netns, SocketAddrV4::new(remote, 6003), 2, 5);
    for c in &lab.spec.containers {
        tcp_send(&c.netns, None, SocketAddrV4::new(remote, 6003), 10 * MB, 5)
            .join()
            .unwrap()
            .expect("to wan loopback");
    }
    assert!(sink.join().unwrap().iter().all(|s| s.intact));
    let echo = udp_echo(
        &lab.spec.wan_netns,
        SocketAddrV4::new(remote, 6004),
        Duration::from_secs(6),
    );
    for c in &lab.spec.containers {
        let payload = vec![0xa5u8; 1000];
        let answer = udp_request(&c.netns, SocketAddrV4::new(remote, 6004), payload.clone());
        assert!(
            answer.is_some_and(|a| a.ends_with(&payload)),
            "{}: partial-checksum reply lost",
            c.netns
        );
        assert!(ping(&c.netns, remote));
    }
    echo.join().unwrap();

    let (status, _) = daemon.stop();
    assert!(status.success());
    assert_eq!(tc_programs(&lab.spec.host_netns, "up0"), "");
}

/// The legacy attachment (clsact qdisc + cls_bpf) works too, on the uplink and on the bridge
/// ports (whose program forwards the container's traffic), and leaves no qdisc behind.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn clsact_mode_works_and_removes_its_qdisc() {
    let _slot = require_root();
    let mut c = ContainerSpec::new("bnt-k1", Ipv4Addr::new(10, 98, 0, 2));
    c.host_veth = "bnt-kv1".into();
    let spec = LabSpec {
        host_netns: "bnt-khost".into(),
        wan_netns: "bnt-kwan".into(),
        bridge: "br-k".into(),
        bridge_addr: Ipv4Addr::new(10, 98, 0, 1),
        subnet_prefix_len: 24,
        uplink: "upk".into(),
        uplink_addr: Ipv4Addr::new(192, 0, 2, 66),
        wan_iface: "peerk".into(),
        wan_addr: Ipv4Addr::new(192, 0, 2, 65),
        uplink_prefix_len: 26,
        remote_server: Ipv4Addr::new(198, 51, 100, 78),
        containers: vec![c],
        ipv6: None,
    };
    let lab = Lab::up(spec);
    let daemon = Daemon::start(
        "bnt-khost",
        &["--uplink", "upk", "--bridge", "br-k", "--tc-mode", "clsact"],
    );
    assert!(
        daemon.ready_line.contains("mode=Clsact"),
        "{}",
        daemon.ready_line
    );
    let (_, qdiscs) = ns_exec("bnt-khost", &["tc", "qdisc", "show", "dev", "upk"]);
    assert!(qdiscs.contains("clsact"), "{qdiscs}");
    let attached = tc_programs("bnt-khost", "upk");
    assert!(
        attached.contains("cls_bpf/egress") && attached.contains("nat_egress"),
        "{attached}"
    );
    assert!(
        attached.contains("cls_bpf/ingress") && attached.contains("nat_ingress"),
        "{attached}"
    );
    let port = tc_programs("bnt-khost", "bnt-kv1");
    assert!(
        port.contains("cls_bpf/ingress") && port.contains("port_ingress"),
        "{port}"
    );
    let forwarded =
        || crate::support::cli::counter(&crate::support::cli::stats_json("bnt-khost"), "forwarded");
    let before = forwarded();
    assert!(ping("bnt-k1", lab.spec.remote_server));
    assert!(
        forwarded() > before,
        "the port program (cls_bpf) forwarded nothing"
    );
    let echo = udp_echo(
        "bnt-kwan",
        SocketAddrV4::new(lab.spec.remote_server, 7000),
        Duration::from_secs(4),
    );
    let answer = udp_request(
        "bnt-k1",
        SocketAddrV4::new(lab.spec.remote_server, 7000),
        b"k".to_vec(),
    )
    .expect("udp");
    assert!(answer.starts_with(b"192.0.2.66:"));
    echo.join().unwrap();
    let (status, _) = daemon.stop();
    assert!(status.success());
    let (_, qdiscs) = ns_exec("bnt-khost", &["tc", "qdisc", "show", "dev", "upk"]);
    assert!(!qdiscs.contains("clsact"), "clsact left behind: {qdiscs}");
    let (_, filters) = ns_exec(
        "bnt-khost",
        &["tc", "filter", "show", "dev", "upk", "egress"],
    );
    assert!(filters.trim().is_empty(), "filters left behind: {filters}");
    let (_, qdiscs) = ns_exec("bnt-khost", &["tc", "qdisc", "show", "dev", "bnt-kv1"]);
    assert!(
        !qdiscs.contains("clsact"),
        "clsact left on the port: {qdiscs}"
    );
}
