//! IPv6, what only works if ICMPv6 errors and fragments are translated (the IPv4 twins and
//! the assertions both share are in `icmp_frag`): traceroute6 through the host, path-MTU
//! discovery across a 1280-byte link beyond it (IPv6 routers never fragment: without a
//! translated "packet too big" every large transfer stalls), UDP datagrams larger than the
//! MTU both ways.

use std::net::{Ipv6Addr, SocketAddrV6};

use super::{add_ipv6, gateway6, lab, settle, V6Lab, REMOTE6};
use crate::{
    icmp_frag::{
        assert_fragmented_udp_through_nat, assert_path_mtu_through_nat,
        assert_traceroute_through_nat,
    },
    support::{e2e::Daemon, require_root, topo::ServerBehindRouter},
};

/// Lab `n` with IPv6 and a server one routed hop behind the WAN namespace (at
/// `ServerBehindRouter::ADDR6`); the uplink's IPv6 address.
fn lab_with_router6(n: u8) -> (V6Lab, ServerBehindRouter, Ipv6Addr) {
    let lab = lab(n);
    let uplink = add_ipv6(&lab, n);
    let srv = ServerBehindRouter::up(&format!("bnt-v6{n}-s"), &lab.spec.wan_netns);
    srv.add_ipv6();
    settle(&[srv.ns(), lab.spec.wan_netns.as_str()]);
    (lab, srv, uplink)
}

fn start(lab: &V6Lab) -> Daemon {
    Daemon::start(
        &lab.spec.host_netns,
        &["--uplink", "up0", "--bridge", "br0"],
    )
}

/// `traceroute -6` (UDP probes, then ICMPv6 echo) from a container lists the host (the
/// bridge's address), the WAN router and the server: the router's time exceeded, the
/// server's port unreachable and echo replies come back translated. Without the datapath
/// nothing beyond the host answers.
#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_traceroute_shows_every_hop_through_the_nat() {
    let _slot = require_root();
    let (lab, _srv, _) = lab_with_router6(4);
    let want = [
        (1, gateway6(4).to_string()),
        (2, "2001:db8:4::1".to_owned()),
        (3, ServerBehindRouter::ADDR6.to_string()),
    ];
    assert_traceroute_through_nat(
        start(&lab),
        &lab.spec.host_netns,
        &lab.spec.containers[0].netns,
        ServerBehindRouter::ADDR6.into(),
        &want,
    );
}

/// The router's link to the server has an MTU of 1280 (IPv6's minimum): a 4 MiB upload from
/// a container completes byte for byte, seen from the uplink's IPv6 address, because the
/// router's "packet too big" reaches the container translated; the container's route cache
/// holds mtu 1280.
#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_path_mtu_discovery_works_through_the_nat() {
    let _slot = require_root();
    let (lab, srv, uplink) = lab_with_router6(4);
    srv.set_router_mtu(1280);
    let _daemon = start(&lab);
    assert_path_mtu_through_nat(
        &lab.spec.host_netns,
        &lab.spec.containers[0].netns,
        srv.ns(),
        SocketAddrV6::new(ServerBehindRouter::ADDR6, 7100, 0, 0).into(),
        4 << 20,
        uplink.into(),
    );
}

/// UDP datagrams of 1453 (the smallest a 1500-byte link fragments over IPv6), 3000 and 8000
/// bytes from a container to an echo on the remote: the remote receives each whole from the
/// uplink's IPv6 address, and its fragmented answer reaches the container whole.
#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_fragmented_udp_datagrams_cross_the_nat_both_ways() {
    let _slot = require_root();
    let lab = lab(5);
    let uplink = add_ipv6(&lab, 5);
    let _daemon = start(&lab);
    assert_fragmented_udp_through_nat(
        &lab.spec.host_netns,
        &lab.spec.containers[0].netns,
        &lab.spec.wan_netns,
        SocketAddrV6::new(REMOTE6.parse().unwrap(), 7200, 0, 0).into(),
        uplink.into(),
        &[1453, 3000, 8000],
    );
}
