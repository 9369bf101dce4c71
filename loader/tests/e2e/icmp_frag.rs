//! End to end: what only works if ICMP errors and fragments are translated. Traceroute
//! through the NAT, path-MTU discovery across a narrower link beyond the host, and UDP
//! datagrams larger than the MTU in both directions. The assertions (`assert_*`) serve the
//! IPv6 twins in `ipv6::paths` too.

use crate::support::require_root;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use crate::support::{cli::counter_in as counter, e2e::*, topo::ServerBehindRouter};

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

/// `traceroute -n` hops as (hop number, address or "*"), over IPv6 (`-6`) for an IPv6 `dst`.
fn traceroute(ns: &str, dst: impl Into<IpAddr>, icmp: bool) -> Vec<(u32, String)> {
    let dst = dst.into();
    let mut args = vec!["traceroute", "-n", "-q", "1", "-w", "1", "-m", "4"];
    if dst.is_ipv6() {
        args.push("-6");
    }
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
    let want = [
        (1, lab.spec.bridge_addr.to_string()),
        (2, lab.spec.wan_addr.to_string()),
        (3, ServerBehindRouter::ADDR.to_string()),
    ];
    let daemon = Daemon::start(
        &lab.spec.host_netns,
        &["--uplink", "up0", "--bridge", "br0"],
    );
    assert_traceroute_through_nat(
        daemon,
        &lab.spec.host_netns,
        &lab.spec.containers[0].netns,
        ServerBehindRouter::ADDR.into(),
        &want,
    );
}

/// Traceroute (UDP probes, then ICMP echo probes with `-I`) from container `c` to `server`
/// through `daemon`, the datapath of `host`, lists exactly the hops `want`: the time-exceeded
/// and port-unreachable errors from beyond the host and the echo replies come back
/// translated. Then the control: without the datapath nothing beyond the first hop answers.
pub(crate) fn assert_traceroute_through_nat(
    daemon: Daemon,
    host: &str,
    c: &str,
    server: IpAddr,
    want: &[(u32, String)],
) {
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
    assert!(counter(host, "icmp_errors_translated") >= 3);
    drop(daemon);

    // Control: without the datapath, nothing beyond the host answers.
    let hops = traceroute(c, server, false);
    assert_eq!(hops.first(), want.first());
    assert!(hops.iter().skip(1).all(|(_, a)| a == "*"), "{hops:?}");
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn path_mtu_discovery_works_through_the_nat() {
    let _slot = require_root();
    let (lab, srv) = lab_with_router("pm", 2);
    srv.set_router_mtu(1280);
    let _daemon = Daemon::start(
        &lab.spec.host_netns,
        &["--uplink", "up0", "--bridge", "br0"],
    );
    assert_path_mtu_through_nat(
        &lab.spec.host_netns,
        &lab.spec.containers[0].netns,
        srv.ns(),
        SocketAddrV4::new(ServerBehindRouter::ADDR, 7100).into(),
        20 * MB,
        lab.spec.uplink_addr.into(),
    );
}

/// With the router's link to the server at 1280 bytes (and the datapath of `host` running):
/// a `len`-byte upload from container `c` to a sink at `server` in `server_ns` arrives whole,
/// from `external`. The container's first full-size segments are too big for the router's
/// next link; only a translated "fragmentation needed" / "packet too big" tells the container
/// to send smaller ones, and it keeps the path MTU in its route cache.
pub(crate) fn assert_path_mtu_through_nat(
    host: &str,
    c: &str,
    server_ns: &str,
    server: SocketAddr,
    len: u64,
    external: IpAddr,
) {
    let sink = tcp_sink(server_ns, server, 1, 42);
    let sent = tcp_send(c, None, server, len, 42).join().unwrap();
    sent.expect("transfer across the 1280-byte link");
    let seen = sink.join().unwrap();
    assert!(seen[0].intact && seen[0].bytes == len, "{seen:?}");
    assert_eq!(seen[0].peer.ip(), external, "{seen:?}");
    assert!(counter(host, "icmp_errors_translated") >= 1);
    let (_, route) = ns_exec(c, &["ip", "route", "get", &server.ip().to_string()]);
    assert!(
        route.contains("mtu 1280"),
        "the container learned the path MTU: {route}"
    );
}

#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn fragmented_udp_datagrams_cross_the_nat_both_ways() {
    let _slot = require_root();
    let (lab, srv) = lab_with_router("fr", 3);
    let _daemon = Daemon::start(
        &lab.spec.host_netns,
        &["--uplink", "up0", "--bridge", "br0"],
    );
    // 1473: the smallest UDP payload a 1500-byte MTU fragments over IPv4.
    assert_fragmented_udp_through_nat(
        &lab.spec.host_netns,
        &lab.spec.containers[0].netns,
        srv.ns(),
        SocketAddrV4::new(ServerBehindRouter::ADDR, 7200).into(),
        lab.spec.uplink_addr.into(),
        &[1473, 3000, 8000],
    );
}

/// UDP datagrams of `sizes` bytes (each larger than the MTU) from container `c` to an echo at
/// `echo` in `echo_ns`, through the datapath of `host`: the echo receives each whole from
/// `external`, and its answer (fragmented too) reaches the container whole. Every datagram
/// and every answer had later fragments, all translated; none unknown.
pub(crate) fn assert_fragmented_udp_through_nat(
    host: &str,
    c: &str,
    echo_ns: &str,
    echo: SocketAddr,
    external: IpAddr,
    sizes: &[usize],
) {
    let server = udp_echo(echo_ns, echo, Duration::from_secs(8));
    for &size in sizes {
        let payload: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
        let answer = udp_request(c, echo, payload.clone())
            .unwrap_or_else(|| panic!("no answer to a {size}-byte datagram"));
        assert!(answer.ends_with(&payload), "{size}-byte datagram corrupted");
        assert_eq!(
            echo_peer_ip(&answer),
            Some(external),
            "the echo saw the {size}-byte datagram from elsewhere"
        );
    }
    let peers = server.join().unwrap();
    assert!(
        peers.len() >= sizes.len() && peers.iter().all(|p| p.ip() == external),
        "{peers:?}"
    );
    assert!(counter(host, "fragments_translated") >= 2 * sizes.len() as u64);
    assert_eq!(counter(host, "drop_fragment_unknown"), 0);
}
