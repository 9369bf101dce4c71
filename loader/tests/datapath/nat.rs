//! Translation both ways, what passes untouched, malformed headers, port choice, accounting.

use super::*;

/// Outbound rows: the source becomes EXTERNAL with the original port kept, and the reply
/// comes back to the container. Each row runs on a fresh datapath.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn outbound_and_reply_table() {
    let _slot = require_root();
    struct Row {
        name: &'static str,
        out: Frame,
        reply_l4: L4,
    }
    let tcp = Frame::new(
        NS1,
        REMOTE,
        L4::Tcp {
            sport: 40000,
            dport: 80,
            flags: SYN,
        },
    );
    let udp = Frame::new(
        NS1,
        REMOTE,
        L4::Udp {
            sport: 40001,
            dport: 53,
        },
    );
    let mut udp_nocsum = Frame::new(
        NS1,
        REMOTE,
        L4::Udp {
            sport: 40002,
            dport: 9,
        },
    );
    udp_nocsum.udp_no_checksum = true;
    let icmp = Frame::new(
        NS1,
        REMOTE,
        L4::IcmpEcho {
            kind: 8,
            id: 0x4242,
            seq: 1,
        },
    );
    let mut tcp_options = Frame::new(
        NS2,
        REMOTE,
        L4::Tcp {
            sport: 40003,
            dport: 443,
            flags: SYN,
        },
    );
    tcp_options.ip_options = vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00]; // router alert + NOPs + EOL
    let mut big = Frame::new(
        NS2,
        REMOTE,
        L4::Udp {
            sport: 40004,
            dport: 5001,
        },
    );
    big.payload = (0..1400u32).map(|i| (i * 7) as u8).collect();

    let rows = [
        Row {
            name: "tcp syn",
            out: tcp,
            reply_l4: L4::Tcp {
                sport: 80,
                dport: 40000,
                flags: SYN_ACK,
            },
        },
        Row {
            name: "udp",
            out: udp,
            reply_l4: L4::Udp {
                sport: 53,
                dport: 40001,
            },
        },
        Row {
            name: "udp zero checksum",
            out: udp_nocsum,
            reply_l4: L4::Udp {
                sport: 9,
                dport: 40002,
            },
        },
        Row {
            name: "icmp echo",
            out: icmp,
            reply_l4: L4::IcmpEcho {
                kind: 0,
                id: 0x4242,
                seq: 1,
            },
        },
        Row {
            name: "tcp with ip options",
            out: tcp_options,
            reply_l4: L4::Tcp {
                sport: 443,
                dport: 40003,
                flags: SYN_ACK,
            },
        },
        Row {
            name: "udp 1400-byte payload",
            out: big,
            reply_l4: L4::Udp {
                sport: 5001,
                dport: 40004,
            },
        },
    ];
    for row in rows {
        let mut dp = datapath(None);
        let (verdict, got) = egress(&mut dp, &row.out);
        assert_eq!(verdict, TCX_NEXT, "{}: egress verdict", row.name);
        let want = with_src(&row.out, EXTERNAL, None);
        assert_frame(&got, &want, &format!("{} (egress)", row.name));
        assert_eq!(dp.counter(Counter::NewMappings).unwrap(), 1, "{}", row.name);
        assert_eq!(
            dp.counter(Counter::EgressTranslated).unwrap(),
            1,
            "{}",
            row.name
        );

        // The reply, as the remote sends it to the external address.
        let mut reply = Frame::new(REMOTE, EXTERNAL, row.reply_l4.clone());
        reply.payload = row.out.payload.clone();
        reply.udp_no_checksum = row.out.udp_no_checksum;
        let (verdict, got) = ingress(&mut dp, &reply);
        assert_eq!(verdict, TCX_NEXT, "{}: ingress verdict", row.name);
        let want = with_dst(&reply, &row.out.src.to_string(), None);
        assert_frame(&got, &want, &format!("{} (reply)", row.name));
        if row.out.udp_no_checksum {
            assert_eq!(
                &got[got.len() - reply.payload.len() - 2..][..2],
                &[0, 0],
                "zero UDP checksum must stay zero"
            );
        }
        assert_eq!(
            dp.counter(Counter::IngressTranslated).unwrap(),
            1,
            "{}",
            row.name
        );
    }
}

/// Frames that are not ours pass untouched, each counted under its reason.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn untouched_table() {
    let _slot = require_root();
    let mut dp = datapath(None);
    let host_own = Frame::new(
        EXTERNAL,
        REMOTE,
        L4::Tcp {
            sport: 5555,
            dport: 80,
            flags: SYN,
        },
    )
    .build();
    let other_subnet = Frame::new(
        "10.1.2.3",
        REMOTE,
        L4::Udp {
            sport: 1000,
            dport: 53,
        },
    )
    .build();
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 203, 0, 113, 2, 0, 0, 0, 0, 0, 0, 203, 0, 113, 1,
    ]);
    let mut ipv6 = vec![0x33, 0x33, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
    ipv6.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    ipv6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ipv6.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ipv6.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
    let unknown_reply = Frame::new(
        REMOTE,
        EXTERNAL,
        L4::Tcp {
            sport: 80,
            dport: 33333,
            flags: SYN_ACK,
        },
    )
    .build();
    // The host's own GRE (a protocol without ports): not ours.
    let gre = Frame::new(EXTERNAL, REMOTE, L4::Raw { proto: 47 }).build();
    // A later fragment (no ports inside) of the host's own datagram.
    let mut frag = Frame::new(EXTERNAL, REMOTE, L4::Raw { proto: 17 });
    frag.frag_offset = 185;
    let frag = frag.build();

    let rows: [(&str, &str, Vec<u8>, Counter); 8] = [
        (
            "host's own traffic",
            names::PROG_EGRESS,
            host_own,
            Counter::PassNoMatch,
        ),
        (
            "source outside internal subnets",
            names::PROG_EGRESS,
            other_subnet,
            Counter::PassNoMatch,
        ),
        (
            "arp egress",
            names::PROG_EGRESS,
            arp.clone(),
            Counter::PassNotIpv4,
        ),
        (
            "arp ingress",
            names::PROG_INGRESS,
            arp,
            Counter::PassNotIpv4,
        ),
        // To the IPv6 program, which has no IPv6 address to masquerade with here: the
        // host's own link-local multicast passes untouched.
        ("ipv6", names::PROG_EGRESS, ipv6, Counter::PassNoMatch),
        (
            "reply to no mapping",
            names::PROG_INGRESS,
            unknown_reply,
            Counter::PassNoMatch,
        ),
        (
            "the host's own protocol without ports",
            names::PROG_EGRESS,
            gre,
            Counter::PassNoMatch,
        ),
        (
            "non-first fragment",
            names::PROG_EGRESS,
            frag,
            Counter::PassFragment,
        ),
    ];
    for (name, prog, input, reason) in rows {
        let before = dp.counter(reason).unwrap();
        let (verdict, got) = run(&mut dp, prog, &input);
        assert_eq!(verdict, TCX_NEXT, "{name}: verdict");
        assert_eq!(got, input, "{name}: frame must pass untouched");
        assert_eq!(
            dp.counter(reason).unwrap(),
            before + 1,
            "{name}: counted as {}",
            reason.name()
        );
    }
    assert_eq!(dp.counter(Counter::NewMappings).unwrap(), 0);
}

/// Malformed headers are dropped and counted, never misread.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn malformed_table() {
    let _slot = require_root();
    let mut dp = datapath(None);
    let good = Frame::new(
        NS1,
        REMOTE,
        L4::Tcp {
            sport: 40000,
            dport: 80,
            flags: SYN,
        },
    )
    .build();
    let mut ihl_too_small = good.clone();
    ihl_too_small[14] = 0x44;
    let mut total_len_too_small = good.clone();
    total_len_too_small[14 + 2..14 + 4].copy_from_slice(&8u16.to_be_bytes());
    let truncated_tcp: Vec<u8> = good[..14 + 20 + 10].to_vec();
    // IHL claims 60 bytes of header; the frame ends before the TCP header would start.
    // (A frame shorter than an IPv4 header is refused by BPF_PROG_TEST_RUN itself.)
    let mut options_past_end = good[..14 + 20 + 20].to_vec();
    options_past_end[14] = 0x4f;
    let rows: [(&str, Vec<u8>); 4] = [
        ("ihl below 5", ihl_too_small),
        ("total length below header", total_len_too_small),
        ("tcp header cut short", truncated_tcp),
        ("ip options past the end", options_past_end),
    ];
    for (i, (name, input)) in rows.into_iter().enumerate() {
        let (verdict, _) = run(&mut dp, names::PROG_EGRESS, &input);
        assert_eq!(verdict, TC_ACT_SHOT, "{name}: verdict");
        assert_eq!(
            dp.counter(Counter::DropMalformed).unwrap(),
            i as u64 + 1,
            "{name}: counted"
        );
    }
    assert_eq!(
        dp.counter(Counter::NewMappings).unwrap(),
        0,
        "no mapping from a malformed packet"
    );
}

/// Two containers, same source port, same destination: the second gets another external port
/// (in the same class) and each reply finds its own container.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn port_conflict_picks_another_port_in_class() {
    let _slot = require_root();
    for (sport, lo, hi) in [
        (40000u16, 1024u16, 65535u16),
        (123, 1, 511),
        (700, 600, 1023),
    ] {
        let mut dp = datapath(None);
        let a = Frame::new(NS1, REMOTE, L4::Udp { sport, dport: 53 });
        let b = Frame::new(NS2, REMOTE, L4::Udp { sport, dport: 53 });
        let (va, got_a) = egress(&mut dp, &a);
        let (vb, got_b) = egress(&mut dp, &b);
        assert_eq!((va, vb), (TCX_NEXT, TCX_NEXT));
        assert_eq!(external_port(&dp, &a), sport, "first flow keeps its port");
        let port_b = external_port(&dp, &b);
        assert_ne!(port_b, sport, "second flow must not reuse the taken port");
        assert!(
            (lo..=hi).contains(&port_b),
            "port {port_b} outside class {lo}-{hi} of {sport}"
        );
        assert_frame(&got_a, &with_src(&a, EXTERNAL, None), "first");
        assert_frame(&got_b, &with_src(&b, EXTERNAL, Some(port_b)), "second");

        for (port, back_to) in [(sport, NS1), (port_b, NS2)] {
            let reply = Frame::new(
                REMOTE,
                EXTERNAL,
                L4::Udp {
                    sport: 53,
                    dport: port,
                },
            );
            let (v, got) = ingress(&mut dp, &reply);
            assert_eq!(v, TCX_NEXT);
            assert_frame(&got, &with_dst(&reply, back_to, Some(sport)), "reply");
        }
    }
}

/// A configured range is honoured, and one external port serves many destinations; when the
/// range is exhausted for a destination the packet is dropped and counted.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn port_range_and_exhaustion() {
    let _slot = require_root();
    let mut dp = datapath(Some("5000-5000".parse().unwrap()));
    let first = Frame::new(
        NS1,
        REMOTE,
        L4::Tcp {
            sport: 40000,
            dport: 80,
            flags: SYN,
        },
    );
    let (v, got) = egress(&mut dp, &first);
    assert_eq!(v, TCX_NEXT);
    assert_frame(
        &got,
        &with_src(&first, EXTERNAL, Some(5000)),
        "first flow gets the only port",
    );

    let second = Frame::new(
        NS2,
        REMOTE,
        L4::Tcp {
            sport: 40000,
            dport: 80,
            flags: SYN,
        },
    );
    let (v, _) = egress(&mut dp, &second);
    assert_eq!(v, TC_ACT_SHOT, "no port left for this destination");
    assert_eq!(dp.counter(Counter::DropNoPort).unwrap(), 1);
    // One try found 5000 for the first flow (its own port 40000 is outside the range); the
    // second flow searched the whole one-port range once.
    assert_eq!(dp.counter(Counter::PortRetries).unwrap(), 2);

    let other_destination = Frame::new(
        NS2,
        "198.51.100.2",
        L4::Tcp {
            sport: 40000,
            dport: 80,
            flags: SYN,
        },
    );
    let (v, got) = egress(&mut dp, &other_destination);
    assert_eq!(
        v, TCX_NEXT,
        "the same external port serves another destination"
    );
    assert_frame(
        &got,
        &with_src(&other_destination, EXTERNAL, Some(5000)),
        "other destination",
    );

    // The existing flow is undisturbed.
    let again = Frame::new(
        NS1,
        REMOTE,
        L4::Tcp {
            sport: 40000,
            dport: 80,
            flags: 0x10,
        },
    );
    let (v, got) = egress(&mut dp, &again);
    assert_eq!(v, TCX_NEXT);
    assert_frame(
        &got,
        &with_src(&again, EXTERNAL, Some(5000)),
        "existing flow",
    );
    assert_eq!(dp.nat_out().unwrap().keys().count(), 2);
    assert_eq!(
        dp.nat_in().unwrap().keys().count(),
        2,
        "no half-mapping left by the failed flow"
    );
}

/// Per-flow accounting: packets, bytes and last-seen on both halves.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn per_flow_counters() {
    let _slot = require_root();
    let mut dp = datapath(None);
    let f = Frame::new(
        NS1,
        REMOTE,
        L4::Udp {
            sport: 41000,
            dport: 53,
        },
    );
    let len = f.build().len() as u64;
    for _ in 0..3 {
        assert_eq!(egress(&mut dp, &f).0, TCX_NEXT);
    }
    let reply = Frame::new(
        REMOTE,
        EXTERNAL,
        L4::Udp {
            sport: 53,
            dport: 41000,
        },
    );
    assert_eq!(ingress(&mut dp, &reply).0, TCX_NEXT);
    let out: Vec<_> = dp.nat_out().unwrap().iter().map(Result::unwrap).collect();
    let inb: Vec<_> = dp.nat_in().unwrap().iter().map(Result::unwrap).collect();
    assert_eq!((out.len(), inb.len()), (1, 1));
    assert_eq!((out[0].1.packets, out[0].1.bytes), (3, 3 * len));
    assert_eq!(
        (inb[0].1.packets, inb[0].1.bytes),
        (1, reply.build().len() as u64)
    );
    assert!(out[0].1.last_seen_ns >= out[0].1.created_ns && out[0].1.created_ns > 0);
    assert_eq!(inb[0].1.addr, bpfnat_common::addr_to_map([172, 18, 0, 2]));
}
