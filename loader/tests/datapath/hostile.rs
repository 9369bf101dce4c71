//! What hostile remotes and containers can do to the table (issue 13): segments no TCP sends,
//! mid-stream segments to a published port, floods of unanswered SYNs.

use super::{
    bridge::{bridged_datapath, publish},
    *,
};

const CLIENT: &str = "192.0.2.77";

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Frame {
    Frame::new(
        src,
        dst,
        L4::Tcp {
            sport,
            dport,
            flags,
        },
    )
}

fn tables_len(dp: &Datapath) -> (usize, usize) {
    (
        dp.nat_out().unwrap().keys().count(),
        dp.nat_in().unwrap().keys().count(),
    )
}

/// Item 3: flag combinations no TCP sends (none at all, SYN with FIN, FIN without ACK, SYN
/// with RST, every flag) are dropped and counted, from a container and from outside, and
/// neither create a mapping nor move an existing one's state.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item3_invalid_tcp_flags_are_dropped_and_never_tracked() {
    let _slot = require_root();
    let mut dp = bridged_datapath(0);
    publish(&mut dp, 6, 8080, [172, 18, 0, 2], 80);
    let invalid: &[u8] = &[0, SYN | FIN, FIN, SYN | RST, 0x3f];
    for (i, &flags) in invalid.iter().enumerate() {
        let sport = 41000 + i as u16;
        let out = tcp(NS1, REMOTE, sport, 80, flags);
        assert_eq!(egress(&mut dp, &out).0, TC_ACT_SHOT, "egress {flags:#04x}");
        let inbound = tcp(CLIENT, EXTERNAL, sport, 8080, flags);
        assert_eq!(
            ingress(&mut dp, &inbound).0,
            TC_ACT_SHOT,
            "to a published port {flags:#04x}"
        );
    }
    assert_eq!(tables_len(&dp), (0, 0), "nothing tracked");
    assert_eq!(
        dp.counter(Counter::DropInvalidTcp).unwrap(),
        2 * invalid.len() as u64
    );

    // An existing mapping: an invalid segment is dropped and leaves its state alone.
    let syn = tcp(NS1, REMOTE, 42000, 80, SYN);
    assert_eq!(egress(&mut dp, &syn).0, TCX_NEXT);
    let before: Vec<NatEntry> = dp.nat_out().unwrap().iter().map(|r| r.unwrap().1).collect();
    let bad = tcp(NS1, REMOTE, 42000, 80, SYN | FIN);
    assert_eq!(egress(&mut dp, &bad).0, TC_ACT_SHOT);
    let after: Vec<NatEntry> = dp.nat_out().unwrap().iter().map(|r| r.unwrap().1).collect();
    assert_eq!(before, after, "the mapping is untouched");
}

/// Item 3: only a SYN opens a connection from outside. ACK-only, FIN-ACK, RST and SYN-ACK
/// segments to a published port without a connection are dropped and create nothing; the
/// SYN creates the mapping.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item3_only_a_syn_opens_a_published_connection() {
    let _slot = require_root();
    let mut dp = bridged_datapath(0);
    publish(&mut dp, 6, 8080, [172, 18, 0, 2], 80);
    for flags in [ACK, FIN | ACK, RST, RST | ACK, SYN | ACK] {
        let f = tcp(CLIENT, EXTERNAL, 43000, 8080, flags);
        assert_eq!(ingress(&mut dp, &f).0, TC_ACT_SHOT, "{flags:#04x}");
    }
    assert_eq!(tables_len(&dp), (0, 0));
    assert_eq!(dp.counter(Counter::DropStrayTcp).unwrap(), 5);
    let syn = tcp(CLIENT, EXTERNAL, 43000, 8080, SYN);
    let (v, got) = ingress(&mut dp, &syn);
    assert_eq!(v, TC_ACT_REDIRECT);
    let mut want = with_dst(&syn, NS1, Some(80));
    want.ttl -= 1;
    assert_frame(&got, &want, "the SYN reaches the container");
    assert_eq!(tables_len(&dp), (1, 1));
}

/// Item 3 (early drop): connections from outside that are never answered hold at most the
/// ring's slots (a quarter of the table: 1,024 of 4,096 here); the next one evicts the
/// oldest, unless that one was answered (the client acknowledged the container's SYN-ACK).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item3_unanswered_syns_are_early_dropped_answered_ones_kept() {
    let _slot = require_root();
    let mut dp = bridged_datapath(0);
    publish(&mut dp, 6, 8080, [172, 18, 0, 2], 80);
    let slots = bpfnat_common::embryonic_slots(4096) as u16;
    assert_eq!(slots, 1024);
    // An answered connection first: SYN in, SYN-ACK out, ACK in.
    assert_eq!(
        ingress(&mut dp, &tcp(CLIENT, EXTERNAL, 44000, 8080, SYN)).0,
        TC_ACT_REDIRECT
    );
    assert_eq!(
        egress(&mut dp, &tcp(NS1, CLIENT, 80, 44000, SYN | ACK)).0,
        TCX_NEXT
    );
    assert_eq!(
        ingress(&mut dp, &tcp(CLIENT, EXTERNAL, 44000, 8080, ACK)).0,
        TC_ACT_REDIRECT
    );
    // Then more unanswered SYNs (forged sources) than the ring has slots.
    const EXTRA: u16 = 10;
    for i in 0..slots + EXTRA {
        let src = format!("100.64.{}.{}", i >> 8, i & 0xff);
        let f = tcp(&src, EXTERNAL, 1024 + i, 8080, SYN);
        assert_eq!(ingress(&mut dp, &f).0, TC_ACT_REDIRECT);
    }
    assert_eq!(
        dp.counter(Counter::EarlyDrops).unwrap(),
        EXTRA as u64,
        "the oldest unanswered SYNs were evicted, one per SYN beyond the ring"
    );
    let total = 1 + (slots + EXTRA) as usize - EXTRA as usize;
    assert_eq!(tables_len(&dp), (total, total));
    let answered = FlowKey::new(
        bpfnat_common::addr_to_map(CLIENT.parse::<std::net::Ipv4Addr>().unwrap().octets()),
        bpfnat_common::addr_to_map(EXTERNAL.parse::<std::net::Ipv4Addr>().unwrap().octets()),
        44000u16.to_be(),
        8080u16.to_be(),
        6,
    );
    assert!(
        dp.nat_in().unwrap().get(&answered, 0).is_ok(),
        "the answered connection is kept although its slot was reused"
    );
    // The first unanswered SYNs are the ones gone.
    let first = FlowKey::new(
        bpfnat_common::addr_to_map([100, 64, 0, 0]),
        answered.dst_addr,
        1024u16.to_be(),
        8080u16.to_be(),
        6,
    );
    assert!(dp.nat_in().unwrap().get(&first, 0).is_err());
}

/// A frame of protocol `proto` whose header (`header`, ports first) and payload follow the IP
/// header directly; with `csum_at`, a checksum over the pseudo-header and the whole packet is
/// computed into that offset of the header (DCCP, UDP-Lite).
fn raw(src: &str, dst: &str, proto: u8, header: &[u8], csum_at: Option<usize>) -> Frame {
    let mut f = Frame::new(src, dst, L4::Raw { proto });
    let mut body = header.to_vec();
    body.extend_from_slice(b"payload!");
    if let Some(at) = csum_at {
        let mut ph = Vec::new();
        ph.extend_from_slice(&f.src.octets());
        ph.extend_from_slice(&f.dst.octets());
        ph.extend_from_slice(&[0, proto]);
        ph.extend_from_slice(&(body.len() as u16).to_be_bytes());
        let sum = support::packet::ones_complement_sum(
            &body,
            support::packet::ones_complement_sum(&ph, 0),
        );
        let csum = !support::packet::fold(sum);
        body[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    }
    f.payload = body;
    f
}

/// Item 4: every protocol is masqueraded, as MASQUERADE does: a protocol without ports (GRE,
/// here) by address only, one flow per peer at a time; SCTP by address with its ports kept
/// (its CRC does not cover the addresses, and cannot be recomputed for a new port); DCCP and
/// UDP-Lite with ports and their pseudo-header checksum fixed up. ICMP messages that are
/// neither echo nor errors about a flow never leave with a container's address, and nothing
/// of any protocol reaches a container from outside directly.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item4_other_protocols_are_masqueraded_never_leaked() {
    let _slot = require_root();
    let mut dp = datapath(None);
    const GRE: u8 = 47;
    const SCTP: u8 = 132;
    const DCCP: u8 = 33;
    const UDPLITE: u8 = 136;

    // GRE: address only, both ways.
    let gre = raw(NS1, REMOTE, GRE, &[0, 0, 0x08, 0], None);
    let (v, got) = egress(&mut dp, &gre);
    assert_eq!(v, TCX_NEXT);
    assert_frame(
        &got,
        &raw(EXTERNAL, REMOTE, GRE, &[0, 0, 0x08, 0], None),
        "GRE out",
    );
    let back = raw(REMOTE, EXTERNAL, GRE, &[0, 0, 0x08, 0], None);
    let (v, got) = ingress(&mut dp, &back);
    assert_eq!(v, TCX_NEXT);
    assert_frame(
        &got,
        &raw(REMOTE, NS1, GRE, &[0, 0, 0x08, 0], None),
        "GRE back",
    );
    // Another container's GRE to the same peer cannot be told apart on the way back.
    let other = raw(NS2, REMOTE, GRE, &[0, 0, 0x08, 0], None);
    assert_eq!(egress(&mut dp, &other).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DropNoPort).unwrap(), 1);

    // SCTP: ports kept, CRC untouched (the bytes after the IP header are unchanged).
    let sctp_hdr = [0x13, 0x88, 0x0b, 0xb8, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    let sctp = raw(NS1, REMOTE, SCTP, &sctp_hdr, None);
    let (v, got) = egress(&mut dp, &sctp);
    assert_eq!(v, TCX_NEXT);
    assert_frame(
        &got,
        &raw(EXTERNAL, REMOTE, SCTP, &sctp_hdr, None),
        "SCTP out",
    );
    let back_hdr = [0x0b, 0xb8, 0x13, 0x88, 0, 0, 0, 2, 0xca, 0xfe, 0xba, 0xbe];
    let (v, got) = ingress(&mut dp, &raw(REMOTE, EXTERNAL, SCTP, &back_hdr, None));
    assert_eq!(v, TCX_NEXT);
    assert_frame(&got, &raw(REMOTE, NS1, SCTP, &back_hdr, None), "SCTP back");
    // The same port to the same peer from another container: no other port can be given.
    assert_eq!(
        egress(&mut dp, &raw(NS2, REMOTE, SCTP, &sctp_hdr, None)).0,
        TC_ACT_SHOT
    );
    assert_eq!(dp.counter(Counter::DropNoPort).unwrap(), 2);

    // DCCP and UDP-Lite: ports at 0 and 2, checksum at 6 over the pseudo-header. The
    // expected frames carry checksums computed from scratch for the translated addresses.
    for (proto, port) in [(DCCP, 40001u16), (UDPLITE, 40002)] {
        let mut hdr = [0u8; 16];
        hdr[0..2].copy_from_slice(&port.to_be_bytes());
        hdr[2..4].copy_from_slice(&5001u16.to_be_bytes());
        hdr[4] = 4; // DCCP data offset / UDP-Lite coverage: anything
        let f = raw(NS1, REMOTE, proto, &hdr, Some(6));
        let (v, got) = egress(&mut dp, &f);
        assert_eq!(v, TCX_NEXT, "proto {proto}");
        assert_frame(
            &got,
            &raw(EXTERNAL, REMOTE, proto, &hdr, Some(6)),
            &format!("proto {proto} out"),
        );
    }

    // ICMP other than echo and errors (a timestamp request): dropped, never leaked.
    let timestamp = Frame::new(
        NS1,
        REMOTE,
        L4::IcmpEcho {
            kind: 13,
            id: 7,
            seq: 1,
        },
    );
    assert_eq!(egress(&mut dp, &timestamp).0, TC_ACT_SHOT);
    // An echo reply from a container has no mapping to leave by either.
    let reply = Frame::new(
        NS1,
        REMOTE,
        L4::IcmpEcho {
            kind: 0,
            id: 7,
            seq: 1,
        },
    );
    assert_eq!(egress(&mut dp, &reply).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DropUntranslatable).unwrap(), 2);

    // From outside, directly to a container: GRE and an ICMP timestamp are dropped.
    let direct_gre = raw(REMOTE, NS1, GRE, &[0, 0, 0x08, 0], None);
    assert_eq!(ingress(&mut dp, &direct_gre).0, TC_ACT_SHOT);
    let direct_ts = Frame::new(
        REMOTE,
        NS1,
        L4::IcmpEcho {
            kind: 13,
            id: 8,
            seq: 1,
        },
    );
    assert_eq!(ingress(&mut dp, &direct_ts).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DropDirectAccess).unwrap(), 2);
}

/// An ARP request from `sender` (IPv4 over Ethernet), as a frame.
fn arp_from(sender: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 172, 18, 0, 1]);
    f
}

/// Item 5: a port whose container's address the loader read from the container's veth sends
/// from that address only: a source outside the bridge's subnets (the uplink's address),
/// the gateway's, another bridge's or an unused address of its own subnet is dropped, and so
/// is an ARP claiming one. A port whose container is not known learns its first address, but
/// never one outside its subnets.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item5_a_port_sends_only_from_its_own_addresses() {
    let _slot = require_root();
    let mut dp = bridged_datapath(0);
    dp.assign_endpoints(1, [0x02, 0, 0, 0, 0, 0x02], &[NS1.parse().unwrap()])
        .unwrap();
    let from = |src: &str| {
        Frame::new(
            src,
            NS2,
            L4::Udp {
                sport: 1000,
                dport: 53,
            },
        )
        .build()
    };
    let spoofed = ["172.18.0.50", EXTERNAL, "172.18.0.1", "172.19.0.2"];
    for src in spoofed {
        assert_eq!(
            run(&mut dp, names::PROG_PORT, &from(src)).0,
            TC_ACT_SHOT,
            "from {src}"
        );
    }
    assert_eq!(run(&mut dp, names::PROG_PORT, &from(NS1)).0, TCX_NEXT);
    assert_eq!(
        run(&mut dp, names::PROG_PORT, &arp_from([172, 18, 0, 50])).0,
        TC_ACT_SHOT,
        "ARP claiming another address"
    );
    assert_eq!(
        run(&mut dp, names::PROG_PORT, &arp_from([172, 18, 0, 2])).0,
        TCX_NEXT
    );
    assert_eq!(
        dp.counter(Counter::DropSpoofed).unwrap(),
        spoofed.len() as u64 + 1
    );

    // Unknown container: its first address is learned, an address outside is refused.
    let mut dp = bridged_datapath(0);
    assert_eq!(
        run(&mut dp, names::PROG_PORT, &from("172.18.0.50")).0,
        TCX_NEXT
    );
    assert_eq!(
        run(&mut dp, names::PROG_PORT, &from(EXTERNAL)).0,
        TC_ACT_SHOT
    );
}

/// Item 7: a RST or FIN changes a connection's state only inside its window, as
/// nf_conntrack's `tcp_in_window` requires. A blind RST (a sequence number the remote never
/// sent) is dropped and counted; a blind FIN is forwarded (the endpoint judges it) but leaves
/// the state alone; the remote's real RST closes the connection; and a RST refusing a SYN
/// must acknowledge it.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item7_resets_and_fins_outside_the_window_change_nothing() {
    let _slot = require_root();
    use bpfnat_common::TcpState::*;
    let (mut dp, sides) = super::tcp::converse(
        "handshake",
        &[
            (true, SYN, SynSent),
            (false, SYN | ACK, SynRecv),
            (true, ACK, Established),
        ],
    );
    let from_remote = |flags: u8, seq: u32, ack: u32| {
        let mut f = tcp(REMOTE, EXTERNAL, 80, 40100, flags);
        f.tcp_seq = seq;
        f.tcp_ack = ack;
        f
    };
    let remote = sides.remote_next;
    for seq in [
        remote.wrapping_add(1),
        remote.wrapping_add(100_000),
        remote.wrapping_sub(5_000_000),
        0,
    ] {
        let (v, _) = ingress(&mut dp, &from_remote(RST, seq, 0));
        assert_eq!(v, TC_ACT_SHOT, "blind RST at {seq}");
        assert_eq!(super::tcp::only_tcp_state(&dp), Established);
    }
    assert_eq!(dp.counter(Counter::DropTcpWindow).unwrap(), 4);
    let blind_fin = from_remote(FIN | ACK, remote.wrapping_add(70_000), sides.container_next);
    let (v, got) = ingress(&mut dp, &blind_fin);
    assert_eq!(v, TCX_NEXT, "a blind FIN is the endpoint's to judge");
    assert_frame(
        &got,
        &with_dst(&blind_fin, NS1, None),
        "blind FIN, translated",
    );
    assert_eq!(super::tcp::only_tcp_state(&dp), Established);
    assert_eq!(dp.counter(Counter::TcpFinIgnored).unwrap(), 1);
    // The remote's own RST, at its next sequence number.
    let (v, _) = ingress(&mut dp, &from_remote(RST, remote, 0));
    assert_eq!(v, TCX_NEXT);
    assert_eq!(super::tcp::only_tcp_state(&dp), Close);

    // A connection being refused: only a RST acknowledging the SYN closes it.
    let (mut dp, sides) = super::tcp::converse("syn", &[(true, SYN, SynSent)]);
    let wrong = from_remote(RST | ACK, 0, sides.container_next.wrapping_add(1));
    assert_eq!(ingress(&mut dp, &wrong).0, TC_ACT_SHOT);
    assert_eq!(super::tcp::only_tcp_state(&dp), SynSent);
    let refused = from_remote(RST | ACK, 0, sides.container_next);
    assert_eq!(ingress(&mut dp, &refused).0, TCX_NEXT);
    assert_eq!(super::tcp::only_tcp_state(&dp), Close);
}

/// Item 9: a packet for a container whose TTL runs out at the host is dropped and counted:
/// left to the host, its ICMP time-exceeded would quote the packet as translated, with the
/// container's address, to the sender.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item9_packets_for_a_container_whose_ttl_runs_out_are_dropped() {
    let _slot = require_root();
    let mut dp = bridged_datapath(0);
    publish(&mut dp, 6, 8080, [172, 18, 0, 2], 80);
    let mut syn = tcp(CLIENT, EXTERNAL, 45000, 8080, SYN);
    syn.ttl = 1;
    assert_eq!(ingress(&mut dp, &syn).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DropTtlExceeded).unwrap(), 1);
    syn.ttl = 2;
    assert_eq!(ingress(&mut dp, &syn).0, TC_ACT_REDIRECT);
}

/// Item 9: a SYN does not reopen a mapping in LAST_ACK (the last ACK may still be on its
/// way; the kernel does not reopen it either), only one whose connection is over.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item9_a_syn_does_not_reopen_last_ack() {
    let _slot = require_root();
    use bpfnat_common::TcpState::*;
    let (mut dp, _) = super::tcp::converse(
        "to last-ack",
        &[
            (true, SYN, SynSent),
            (false, SYN | ACK, SynRecv),
            (true, ACK, Established),
            (true, FIN | ACK, FinWait),
            (false, FIN | ACK, LastAck),
        ],
    );
    let syn = tcp(NS1, REMOTE, 40100, 80, SYN);
    assert_eq!(egress(&mut dp, &syn).0, TCX_NEXT);
    assert_eq!(dp.counter(Counter::TcpReopened).unwrap(), 0);
    assert_eq!(super::tcp::only_tcp_state(&dp), LastAck);
}

/// Item 1, the other order: the host's own flow whose reply tuple a container's mapping
/// already holds (the host picked the port without knowing of it) gets another port, as
/// nf_nat remaps a clashing host flow; its answers come back to the host on its own port,
/// and the container's keep going to the container.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item1_a_host_flow_clashing_with_a_mapping_gets_another_port() {
    let _slot = require_root();
    let mut dp = datapath(None);
    let container = tcp(NS1, REMOTE, 40700, 80, SYN);
    assert_eq!(egress(&mut dp, &container).0, TCX_NEXT);
    assert_eq!(
        external_port(&dp, &container),
        40700,
        "the container keeps its port"
    );
    let host = tcp(EXTERNAL, REMOTE, 40700, 80, SYN);
    let (v, got) = egress(&mut dp, &host);
    assert_eq!(v, TCX_NEXT);
    let remapped = external_port(&dp, &host);
    assert_ne!(remapped, 40700);
    assert_frame(
        &got,
        &with_src(&host, EXTERNAL, Some(remapped)),
        "host flow, remapped",
    );
    assert_eq!(dp.counter(Counter::HostFlowsRemapped).unwrap(), 1);
    // Answers: the host's to the host (on its own port), the container's to the container.
    let to_host = tcp(REMOTE, EXTERNAL, 80, remapped, SYN | ACK);
    let (v, got) = ingress(&mut dp, &to_host);
    assert_eq!(v, TCX_NEXT, "to the host's stack");
    assert_frame(
        &got,
        &with_dst(&to_host, EXTERNAL, Some(40700)),
        "answer to the host",
    );
    let to_container = tcp(REMOTE, EXTERNAL, 80, 40700, SYN | ACK);
    let (_, got) = ingress(&mut dp, &to_container);
    assert_frame(
        &got,
        &with_dst(&to_container, NS1, None),
        "answer to the container",
    );
    // The host's flows that clash with nothing stay untouched.
    let other = tcp(EXTERNAL, REMOTE, 40701, 80, SYN);
    let (v, got) = egress(&mut dp, &other);
    assert_eq!((v, got), (TCX_NEXT, other.build()));
}
