//! End to end: what only works if ICMP errors and fragments are translated. Traceroute
//! through the NAT, path-MTU discovery across a narrower link beyond the host, and UDP
//! datagrams larger than the MTU in both directions.

use crate::support::require_root;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
    time::Duration,
};

use crate::support::{e2e::*, topo::ServerBehindRouter};

const MB: u64 = 1 << 20;

/// A lab with its own names (prefix `p`), plus a server one routed hop behind the wan
/// namespace.
fn lab_with_router(p: &str, n: u8) -> (Lab, ServerBehindRouter) {
    let spec = crate::support::topo::test_lab(
        &format!("bnt-{p}"),
        [10, 93, n],
        1,
        Ipv4Addr::new(192, 0, 2, 40 + n),
        Ipv4Addr::new(192, 0, 2, 50 + n),
        Ipv4Addr::new(198, 51, 100, 93),
    );
    let lab = Lab::up(spec);
    let srv = ServerBehindRouter::up(&format!("bnt-{p}-s"), &lab.spec.wan_netns);
    (lab, srv)
}

/// One counter of the running instance in `host_ns`.
fn counter(host_ns: &str, name: &str) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_bpfnat"))
        .args(["--netns", host_ns, "--json", "stats"])
        .output()
        .expect("bpfnat stats");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    v["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {v}"))
}

/// `traceroute -n` hops as (hop number, address or "*").
fn traceroute(ns: &str, dst: Ipv4Addr, icmp: bool) -> Vec<(u32, String)> {
    let mut args = vec!["traceroute", "-n", "-q", "1", "-w", "1", "-m", "4"];
    if icmp {
        args.push("-I");
    }
    let dst = dst.to_string();
    args.push(&dst);
    let (_, out) = ns_exec(ns, &args);
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.to_owned()))
        })
        .collect()
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn traceroute_shows_every_hop_through_the_nat() {
    let _slot = require_root();
    let (lab, _srv) = lab_with_router("tr", 1);
    let c = &lab.spec.containers[0].netns;
    let server = ServerBehindRouter::ADDR;
    let want = vec![
        (1, lab.spec.bridge_addr.to_string()),
        (2, lab.spec.wan_addr.to_string()),
        (3, server.to_string()),
    ];

    let daemon = Daemon::start(
        &lab.spec.host_netns,
        &["--uplink", "up0", "--bridge", "br0"],
    );
    for icmp in [false, true] {
        let hops = traceroute(c, server, icmp);
        assert_eq!(
            hops,
            want,
            "traceroute {} through the NAT",
            if icmp { "-I" } else { "(UDP)" }
        );
    }
    // Time exceeded from the router and port unreachable / echo replies from the server.
    assert!(counter(&lab.spec.host_netns, "icmp_errors_translated") >= 3);
    drop(daemon);

    // Control: without the datapath, nothing beyond the host answers.
    let hops = traceroute(c, server, false);
    assert_eq!(hops.first(), Some(&(1, lab.spec.bridge_addr.to_string())));
    assert!(hops.iter().skip(1).all(|(_, a)| a == "*"), "{hops:?}");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn path_mtu_discovery_works_through_the_nat() {
    let _slot = require_root();
    let (lab, srv) = lab_with_router("pm", 2);
    srv.set_router_mtu(1280);
    let c = lab.spec.containers[0].netns.clone();
    let server = ServerBehindRouter::ADDR;
    let _daemon = Daemon::start(
        &lab.spec.host_netns,
        &["--uplink", "up0", "--bridge", "br0"],
    );

    // The container's first full-size segments are too big for the router's next link; only a
    // translated "fragmentation needed" tells the container to send smaller ones.
    let sink = tcp_sink("bnt-pm-s", SocketAddrV4::new(server, 7100), 1, 42);
    let sent = tcp_send(&c, None, SocketAddrV4::new(server, 7100), 20 * MB, 42)
        .join()
        .unwrap();
    sent.expect("transfer across the 1280-byte link");
    let seen = sink.join().unwrap();
    assert!(seen[0].intact && seen[0].bytes == 20 * MB, "{seen:?}");
    assert!(counter(&lab.spec.host_netns, "icmp_errors_translated") >= 1);
    let (_, route) = ns_exec(&c, &["ip", "route", "get", &server.to_string()]);
    assert!(
        route.contains("mtu 1280"),
        "the container learned the path MTU: {route}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn fragmented_udp_datagrams_cross_the_nat_both_ways() {
    let _slot = require_root();
    let (lab, _srv) = lab_with_router("fr", 3);
    let c = lab.spec.containers[0].netns.clone();
    let server = ServerBehindRouter::ADDR;
    let _daemon = Daemon::start(
        &lab.spec.host_netns,
        &["--uplink", "up0", "--bridge", "br0"],
    );

    let echo = udp_echo(
        "bnt-fr-s",
        SocketAddrV4::new(server, 7200),
        Duration::from_secs(8),
    );
    for size in [1473usize, 3000, 8000] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
        let answer = udp_request(&c, SocketAddrV4::new(server, 7200), payload.clone())
            .unwrap_or_else(|| panic!("no answer to a {size}-byte datagram"));
        assert!(answer.ends_with(&payload), "{size}-byte datagram corrupted");
        assert!(answer.starts_with(format!("{}:", lab.spec.uplink_addr).as_bytes()));
    }
    echo.join().unwrap();
    // Each datagram and each answer had later fragments, all translated; none unknown.
    assert!(counter(&lab.spec.host_netns, "fragments_translated") >= 6);
    assert_eq!(counter(&lab.spec.host_netns, "drop_fragment_unknown"), 0);
}
