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
