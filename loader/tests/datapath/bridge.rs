//! Bridges: published ports, direct-access protection, bridge policy, hairpin.

use super::*;

/// A fake bridge for the tables: `BPF_PROG_TEST_RUN` runs with the loopback device, so the
/// "port" the test frames arrive on is ifindex 1; redirects are reported, not performed.
const BRIDGE: u32 = 1000;
const OTHER_BRIDGE: u32 = 1001;

pub(crate) fn bridged_datapath(flags: u32) -> Datapath {
    let mut dp = datapath(None);
    let info = |gw: [u8; 4], flags| bpfnat_common::BridgeInfo {
        gateway: bpfnat_common::addr_to_map(gw),
        flags,
        mac: [2, 0, 0, 0, 0, 0xb1],
        pad: [0; 2],
        gateway6: [0; 4],
    };
    dp.add_bridge(
        BRIDGE,
        info([172, 18, 0, 1], flags),
        &["172.18.0.0/24".parse().unwrap()],
    )
    .unwrap();
    dp.add_bridge(
        OTHER_BRIDGE,
        info([172, 19, 0, 1], 0),
        &["172.19.0.0/24".parse().unwrap()],
    )
    .unwrap();
    dp.add_port(1, BRIDGE).unwrap();
    dp
}

pub(crate) fn publish(dp: &mut Datapath, proto: u8, host_port: u16, ctr: [u8; 4], ctr_port: u16) {
    let key = bpfnat_common::PublishKey {
        host_addr: 0,
        host_port: host_port.to_be(),
        proto,
        pad: 0,
    };
    let target = bpfnat_common::PublishTarget {
        addr: bpfnat_common::addr_to_map(ctr),
        port: ctr_port.to_be(),
        pad: 0,
    };
    dp.publish(key, target).unwrap();
}

/// A connection to a published port reaches the container with the client's real address;
/// the container's answers leave from the published port; unpublished ports and direct
/// access to container addresses are dropped.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn published_ports_and_direct_access() {
    let _slot = require_root();
    let mut dp = bridged_datapath(0);
    publish(&mut dp, 6, 8080, [172, 18, 0, 2], 80);
    publish(&mut dp, 17, 5353, [172, 18, 0, 3], 53);
    const CLIENT: &str = "203.0.113.1";

    for (proto_l4, reply_l4, ctr, ctr_port) in [
        (
            L4::Tcp {
                sport: 50000,
                dport: 8080,
                flags: SYN,
            },
            L4::Tcp {
                sport: 80,
                dport: 50000,
                flags: SYN | ACK,
            },
            NS1,
            80u16,
        ),
        (
            L4::Udp {
                sport: 50001,
                dport: 5353,
            },
            L4::Udp {
                sport: 53,
                dport: 50001,
            },
            NS2,
            53,
        ),
    ] {
        let inbound = Frame::new(CLIENT, EXTERNAL, proto_l4);
        let (v, got) = ingress(&mut dp, &inbound);
        // Forwarded by the datapath itself (to the bridge, which resolves the container's
        // MAC): routed, so the TTL drops by one.
        assert_eq!(v, TC_ACT_REDIRECT, "published, inbound: forwarded");
        let mut want = with_dst(&inbound, ctr, Some(ctr_port));
        want.ttl -= 1;
        assert_frame(&got, &want, "published, inbound");
        let answer = Frame::new(ctr, CLIENT, reply_l4);
        let (v, got) = egress(&mut dp, &answer);
        assert_eq!(v, TCX_NEXT);
        let host_port = match inbound.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => dport,
            _ => unreachable!(),
        };
        assert_frame(
            &got,
            &with_src(&answer, EXTERNAL, Some(host_port)),
            "published, answer",
        );
    }
    assert_eq!(dp.counter(Counter::PublishedMappings).unwrap(), 2);

    // Unpublished port: not ours (the host's own, or nothing).
    let other = Frame::new(
        CLIENT,
        EXTERNAL,
        L4::Udp {
            sport: 50002,
            dport: 9999,
        },
    );
    assert_eq!(ingress(&mut dp, &other).0, TCX_NEXT);
    assert_eq!(dp.counter(Counter::PublishedMappings).unwrap(), 2);

    // Direct access to a container address, of every kind, is dropped.
    let direct = [
        Frame::new(
            CLIENT,
            NS1,
            L4::Tcp {
                sport: 50003,
                dport: 80,
                flags: SYN,
            },
        ),
        Frame::new(
            CLIENT,
            NS1,
            L4::IcmpEcho {
                kind: 8,
                id: 1,
                seq: 1,
            },
        ),
        Frame::new(CLIENT, "172.19.0.9", L4::Udp { sport: 1, dport: 2 }),
    ];
    for (i, f) in direct.iter().enumerate() {
        assert_eq!(ingress(&mut dp, f).0, TC_ACT_SHOT, "direct access {i}");
    }
    assert_eq!(dp.counter(Counter::DropDirectAccess).unwrap(), 3);
}

/// The port program: inter-container traffic off drops same-bridge traffic (but not the
/// gateway), two bridges are isolated, an internal bridge keeps traffic in.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn bridge_policy_table() {
    let _slot = require_root();
    use bpfnat_common::{BRIDGE_ICC_OFF, BRIDGE_INTERNAL};
    let rows: [(&str, u32, &str, u32, Counter); 6] = [
        (
            "icc on: bridged frame to a container not yet seen",
            0,
            NS2,
            TCX_NEXT,
            Counter::PortPackets,
        ),
        (
            "icc off: container to container",
            BRIDGE_ICC_OFF,
            NS2,
            TC_ACT_SHOT,
            Counter::DropIcc,
        ),
        (
            "icc off: container to its gateway",
            BRIDGE_ICC_OFF,
            "172.18.0.1",
            TCX_NEXT,
            Counter::PortPackets,
        ),
        (
            "another bridge",
            0,
            "172.19.0.5",
            TC_ACT_SHOT,
            Counter::DropIsolation,
        ),
        (
            "internal bridge: outside",
            BRIDGE_INTERNAL,
            REMOTE,
            TC_ACT_SHOT,
            Counter::DropInternal,
        ),
        (
            "internal bridge: gateway",
            BRIDGE_INTERNAL,
            "172.18.0.1",
            TCX_NEXT,
            Counter::PortPackets,
        ),
    ];
    for (name, flags, dst, verdict, counter) in rows {
        let mut dp = bridged_datapath(flags);
        let before = dp.counter(counter).unwrap();
        let f = Frame::new(
            NS1,
            dst,
            L4::Udp {
                sport: 1234,
                dport: 53,
            },
        )
        .build();
        let (v, got) = run(&mut dp, names::PROG_PORT, &f);
        assert_eq!(v, verdict, "{name}");
        if v == TCX_NEXT {
            assert_eq!(got, f, "{name}: passes untouched");
        }
        assert!(
            dp.counter(counter).unwrap() > before,
            "{name}: counted as {}",
            counter.name()
        );
    }

    // Learning: after NS2 has sent a frame, frames to it are redirected to its port.
    let mut dp = bridged_datapath(0);
    let from_ns2 = Frame::new(NS2, NS1, L4::Udp { sport: 1, dport: 2 }).build();
    run(&mut dp, names::PROG_PORT, &from_ns2);
    let to_ns2 = Frame::new(NS1, NS2, L4::Udp { sport: 2, dport: 1 }).build();
    let (v, got) = run(&mut dp, names::PROG_PORT, &to_ns2);
    assert_eq!(v, TC_ACT_REDIRECT, "known container: straight to its port");
    assert_eq!(got, to_ns2, "bridged frames are not modified");
    assert_eq!(dp.counter(Counter::Forwarded).unwrap(), 1);
}

/// Like `assert_frame`, from the Ethernet type on: for frames the datapath forwarded itself,
/// whose MACs it may have set.
fn assert_l3(got: &[u8], want: &Frame, case: &str) {
    verify_checksums(got).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(
        &got[12..],
        &want.build()[12..],
        "{case}: output differs from the expected one"
    );
}

/// Hairpin: a container reaching a published port through the host's uplink address gets
/// the published container, with the gateway as source so the answer comes back through
/// the host and is turned back into the address it asked for; the published container can
/// reach itself the same way.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn hairpin_table() {
    let _slot = require_root();
    const GATEWAY: &str = "172.18.0.1";
    for (client, sport) in [(NS2, 45000u16), (NS1, 45001)] {
        let mut dp = bridged_datapath(0);
        publish(&mut dp, 6, 8080, [172, 18, 0, 2], 80);
        let ask = Frame::new(
            client,
            EXTERNAL,
            L4::Tcp {
                sport,
                dport: 8080,
                flags: SYN,
            },
        );
        let (v, got) = run(&mut dp, names::PROG_PORT, &ask.build());
        assert_eq!(
            v, TC_ACT_REDIRECT,
            "{client}: hairpin forwarded to the published container"
        );
        let mut want = with_dst(&with_src(&ask, GATEWAY, None), NS1, Some(80));
        want.ttl -= 1;
        assert_l3(&got, &want, "hairpin, request");

        let answer = Frame::new(
            NS1,
            GATEWAY,
            L4::Tcp {
                sport: 80,
                dport: sport,
                flags: SYN | ACK,
            },
        );
        let (v, got) = run(&mut dp, names::PROG_PORT, &answer.build());
        assert_eq!(v, TC_ACT_REDIRECT, "{client}: answer forwarded back");
        let mut want = with_dst(&with_src(&answer, EXTERNAL, Some(8080)), client, None);
        want.ttl -= 1;
        assert_l3(&got, &want, "hairpin, answer");
        // The asking container was learned from its request: the answer goes straight to
        // it, addressed to its MAC from the bridge's.
        assert_eq!(&got[0..12], &[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0xb1]);
        assert_eq!(dp.counter(Counter::HairpinTranslated).unwrap(), 2);
    }

    // Not published: the host's own service, untouched.
    let mut dp = bridged_datapath(0);
    let f = Frame::new(
        NS2,
        EXTERNAL,
        L4::Tcp {
            sport: 45002,
            dport: 22,
            flags: SYN,
        },
    )
    .build();
    assert_eq!(run(&mut dp, names::PROG_PORT, &f), (TCX_NEXT, f));
}

/// Fixes found end to end: the gateway's address is never learned from a container, an
/// internal bridge reaches neither the uplink address nor the outside (also through the
/// host's own forwarding), hairpin to a container on another bridge is sourced from that
/// bridge's gateway, and a published connection is reopened by a new client SYN.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn bridge_edge_cases() {
    let _slot = require_root();
    use bpfnat_common::BRIDGE_INTERNAL;
    // A container claiming the gateway's address does not attract the host's traffic.
    let mut dp = bridged_datapath(0);
    let spoof = Frame::new("172.18.0.1", NS2, L4::Udp { sport: 1, dport: 2 }).build();
    run(&mut dp, names::PROG_PORT, &spoof);
    let to_gw = Frame::new(NS1, "172.18.0.1", L4::Udp { sport: 2, dport: 1 }).build();
    assert_eq!(
        run(&mut dp, names::PROG_PORT, &to_gw),
        (TCX_NEXT, to_gw.clone())
    );

    // Internal bridge: the uplink address is out of reach, and so is masquerading.
    let mut dp = bridged_datapath(BRIDGE_INTERNAL);
    let to_uplink = Frame::new(
        NS1,
        EXTERNAL,
        L4::Udp {
            sport: 3,
            dport: 5353,
        },
    )
    .build();
    assert_eq!(run(&mut dp, names::PROG_PORT, &to_uplink).0, TC_ACT_SHOT);
    let out = Frame::new(
        NS1,
        REMOTE,
        L4::Udp {
            sport: 3,
            dport: 53,
        },
    );
    assert_eq!(
        egress(&mut dp, &out).0,
        TC_ACT_SHOT,
        "no masquerade for an internal bridge"
    );
    assert_eq!(dp.counter(Counter::DropInternal).unwrap(), 2);
    assert_eq!(dp.counter(Counter::NewMappings).unwrap(), 0);

    // Hairpin to a container on the other bridge: sourced from that bridge's gateway.
    let mut dp = bridged_datapath(0);
    publish(&mut dp, 6, 8081, [172, 19, 0, 5], 80);
    let ask = Frame::new(
        NS2,
        EXTERNAL,
        L4::Tcp {
            sport: 45100,
            dport: 8081,
            flags: SYN,
        },
    );
    let (v, got) = run(&mut dp, names::PROG_PORT, &ask.build());
    assert_eq!(v, TC_ACT_REDIRECT);
    let mut want = with_dst(&with_src(&ask, "172.19.0.1", None), "172.19.0.5", Some(80));
    want.ttl -= 1;
    assert_l3(&got, &want, "hairpin across bridges");

    // A published connection closed, then reopened by the client's new SYN.
    let mut dp = bridged_datapath(0);
    publish(&mut dp, 6, 8080, [172, 18, 0, 2], 80);
    const CLIENT: &str = "203.0.113.1";
    let c = |flags| {
        Frame::new(
            CLIENT,
            EXTERNAL,
            L4::Tcp {
                sport: 50100,
                dport: 8080,
                flags,
            },
        )
    };
    let s = |flags| {
        Frame::new(
            NS1,
            CLIENT,
            L4::Tcp {
                sport: 80,
                dport: 50100,
                flags,
            },
        )
    };
    ingress(&mut dp, &c(SYN));
    egress(&mut dp, &s(SYN | ACK));
    ingress(&mut dp, &c(ACK));
    ingress(&mut dp, &c(FIN | ACK));
    egress(&mut dp, &s(FIN | ACK));
    ingress(&mut dp, &c(ACK));
    assert_eq!(dp.counter(Counter::TcpReopened).unwrap(), 0);
    let (v, _) = ingress(&mut dp, &c(SYN));
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(dp.counter(Counter::TcpReopened).unwrap(), 1);
    assert_eq!(
        dp.counter(Counter::PublishedMappings).unwrap(),
        1,
        "same mapping"
    );
}

/// A bridge with masquerade off (Docker's `enable_ip_masquerade=false`): its containers leave
/// untranslated and their replies come back as they are; a new TCP connection from outside
/// is refused all the same, and a published port into it works as on any bridge. The other
/// bridge (masquerading) keeps its direct-access protection.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn a_bridge_without_masquerade_is_routed_untranslated() {
    let _slot = require_root();
    use bpfnat_common::BRIDGE_NO_MASQUERADE;
    let mut dp = bridged_datapath(BRIDGE_NO_MASQUERADE);
    let tcp = |src, dst, sport, dport, flags| {
        Frame::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    };
    let rows = [
        // (hook, frame, verdict, case)
        (
            "egress",
            tcp(NS1, REMOTE, 40000, 443, SYN),
            TCX_NEXT,
            "out, as it is",
        ),
        (
            "ingress",
            tcp(REMOTE, NS1, 443, 40000, SYN | ACK),
            TCX_NEXT,
            "its reply, as it is",
        ),
        (
            "ingress",
            Frame::new(
                REMOTE,
                NS1,
                L4::Udp {
                    sport: 53,
                    dport: 40001,
                },
            ),
            TCX_NEXT,
            "a UDP reply",
        ),
        (
            "ingress",
            tcp(REMOTE, NS1, 40002, 22, SYN),
            TC_ACT_SHOT,
            "a new connection",
        ),
        (
            "ingress",
            tcp(REMOTE, "172.19.0.9", 40003, 22, ACK),
            TC_ACT_SHOT,
            "the masquerading bridge: direct access",
        ),
    ];
    for (hook, frame, verdict, case) in &rows {
        let (v, got) = match *hook {
            "egress" => egress(&mut dp, frame),
            _ => ingress(&mut dp, frame),
        };
        assert_eq!(v, *verdict, "{case}");
        if v == TCX_NEXT {
            assert_frame(&got, frame, case);
        }
    }
    assert_eq!(dp.counter(Counter::PassNotMasqueraded).unwrap(), 1);
    assert_eq!(dp.counter(Counter::DropDirectAccess).unwrap(), 2);
    assert_eq!(dp.counter(Counter::NewMappings).unwrap(), 0);

    // Published into it: translated both ways, as on any bridge.
    publish(&mut dp, 6, 8080, [172, 18, 0, 2], 80);
    let inbound = tcp("203.0.113.1", EXTERNAL, 50000, 8080, SYN);
    let (v, got) = ingress(&mut dp, &inbound);
    assert_eq!(v, TC_ACT_REDIRECT);
    let mut want = with_dst(&inbound, NS1, Some(80));
    want.ttl -= 1;
    assert_frame(&got, &want, "published, inbound");
    let answer = tcp(NS1, "203.0.113.1", 80, 50000, SYN | ACK);
    let (v, got) = egress(&mut dp, &answer);
    assert_eq!(v, TCX_NEXT);
    assert_frame(
        &got,
        &with_src(&answer, EXTERNAL, Some(8080)),
        "published, answer",
    );
}
