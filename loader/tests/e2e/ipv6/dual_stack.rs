//! Both families at once: one container holds a TCP connection over IPv4 and one over IPv6
//! while it sends UDP over both; each is masqueraded with the uplink's address of its family,
//! both are in `conntrack list`, and the host has no netfilter rule of any kind.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use serde_json::Value;

use super::{add_ipv6, lab, REMOTE4, REMOTE6};
use crate::support::{
    cli::conntrack_json,
    e2e::{echo_peer_ip, ns_exec, udp_echo, udp_request, Daemon, HeldTcp},
    require_root,
};

/// The connection of `conns` with protocol `proto` to `dst`; its listing otherwise.
fn find<'a>(conns: &'a [Value], proto: &str, dst: SocketAddr) -> &'a Value {
    let family = if dst.is_ipv4() { "ipv4" } else { "ipv6" };
    conns
        .iter()
        .find(|c| {
            c["family"] == family
                && c["proto"] == proto
                && c["original"]["dst"] == dst.ip().to_string()
                && c["original"]["dport"] == dst.port()
        })
        .unwrap_or_else(|| panic!("no {family} {proto} connection to {dst} in {conns:#?}"))
}

#[test]
#[ignore = "needs root: network namespaces, BPF programs"]
fn ipv6_and_ipv4_flows_of_one_container_at_once() {
    let _slot = require_root();
    let lab = lab(5);
    let uplink6 = add_ipv6(&lab, 5);
    let uplink4 = lab.spec.uplink_addr;
    let host = lab.spec.host_netns.clone();
    let wan = lab.spec.wan_netns.clone();
    let c1 = lab.spec.containers[0].netns.clone();
    let remote6: Ipv6Addr = REMOTE6.parse().unwrap();
    let _daemon = Daemon::start(&host, &["--uplink", "up0", "--bridge", "br0"]);

    let (tcp4, tcp6): (SocketAddr, SocketAddr) = (
        SocketAddrV4::new(REMOTE4, 7301).into(),
        SocketAddrV6::new(remote6, 7302, 0, 0).into(),
    );
    let (udp4, udp6): (SocketAddr, SocketAddr) = (
        SocketAddrV4::new(REMOTE4, 7303).into(),
        SocketAddrV6::new(remote6, 7304, 0, 0).into(),
    );
    // Both TCP connections open at the same time, then UDP both ways over both families
    // while they are held.
    let held4 = HeldTcp::open(&wan, &c1, tcp4);
    let held6 = HeldTcp::open(&wan, &c1, tcp6);
    let echoes = [udp4, udp6].map(|a| (a, udp_echo(&wan, a, Duration::from_secs(5))));
    for (dst, external) in [(udp4, IpAddr::from(uplink4)), (udp6, uplink6.into())] {
        let answer = udp_request(&c1, dst, b"dual".to_vec())
            .unwrap_or_else(|| panic!("no UDP answer from {dst}"));
        assert_eq!(echo_peer_ip(&answer), Some(external), "UDP to {dst}");
    }

    let conns = conntrack_json(&host, &[]);
    // Both families are listed with the same fields.
    let shape = |c: &Value| {
        let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
        (keys(c), keys(&c["original"]), keys(&c["reply"]))
    };
    assert_eq!(
        shape(find(&conns, "tcp", tcp4)),
        shape(find(&conns, "tcp", tcp6)),
        "{conns:#?}"
    );
    for (dst, proto, external) in [
        (tcp4, "tcp", uplink4.to_string()),
        (tcp6, "tcp", uplink6.to_string()),
        (udp4, "udp", uplink4.to_string()),
        (udp6, "udp", uplink6.to_string()),
    ] {
        let c = find(&conns, proto, dst);
        assert_eq!(c["external_addr"], external, "{c}");
        if proto == "tcp" {
            assert_eq!(c["state"], "ESTABLISHED", "{c}");
        }
    }

    // An address filter selects its own version only.
    let v6_only = conntrack_json(&host, &["--src", "fd00:85:5::/64"]);
    assert!(
        !v6_only.is_empty() && v6_only.iter().all(|c| c["family"] == "ipv6"),
        "{v6_only:#?}"
    );
    let v4_only = conntrack_json(&host, &["--src", "10.83.5.0/24"]);
    assert!(
        !v4_only.is_empty() && v4_only.iter().all(|c| c["family"] == "ipv4"),
        "{v4_only:#?}"
    );
    assert_eq!(v6_only.len() + v4_only.len(), conns.len(), "{conns:#?}");

    for (echo_addr, echo) in echoes {
        let peers = echo.join().unwrap();
        assert!(!peers.is_empty(), "{echo_addr} heard nothing");
    }
    assert_eq!(held4.close().map(|p| p.ip()), Some(uplink4.into()));
    assert_eq!(held6.close().map(|p| p.ip()), Some(uplink6.into()));

    // Not one netfilter rule in the host namespace, of either family.
    for save in ["iptables-save", "ip6tables-save"] {
        let (_, rules) = ns_exec(&host, &[save]);
        assert!(
            !rules.lines().any(|l| l.starts_with("-A")),
            "{save}: {rules}"
        );
    }
    let (_, nft) = ns_exec(&host, &["nft", "list", "ruleset"]);
    assert!(!nft.lines().any(|l| l.starts_with("table")), "{nft}");
}
