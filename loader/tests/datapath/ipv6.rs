//! IPv6 (NAT66 masquerade): crafted IPv6 frames through the uplink's programs, which hand
//! them to the IPv6 programs by a tail call. Expected frames are built from scratch here, with
//! checksums computed over the IPv6 pseudo-header independently of the kernel's incremental
//! helpers, so byte equality checks the rewrite and every checksum at once.

use super::*;

use std::net::Ipv6Addr;

use bpfnat_common::{FlowKey6, NatEntry6};

const EXTERNAL6: &str = "2001:db8::2";
const REMOTE6: &str = "2001:db8:100::1";
const C1: &str = "fd00:18::2";

/// An IPv6 extension header: its kind and its body after the next-header byte and the
/// length byte (padded here to a multiple of 8 with the two).
#[derive(Clone, Debug)]
struct Ext {
    kind: u8,
    body: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum L4v6 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Echo {
        kind: u8,
        id: u16,
        seq: u16,
    },
    /// An ICMPv6 message of another type (a neighbour solicitation, an error).
    Icmp {
        kind: u8,
    },
    /// No L4 header: the payload alone, as in a later fragment of a `proto` datagram.
    Raw {
        proto: u8,
    },
}

#[derive(Clone, Debug)]
struct Frame6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    ext: Vec<Ext>,
    l4: L4v6,
    payload: Vec<u8>,
}

/// The one's-complement sum of `data` (16-bit big-endian words), unfolded.
fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Frame6 {
    fn new(src: &str, dst: &str, l4: L4v6) -> Self {
        Self {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            hop_limit: 64,
            ext: Vec::new(),
            l4,
            payload: b"bpfnat".to_vec(),
        }
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4v6::Tcp { .. } => 6,
            L4v6::Udp { .. } => 17,
            L4v6::Echo { .. } | L4v6::Icmp { .. } => 58,
            L4v6::Raw { proto } => proto,
        }
    }

    /// The L4 header and payload, with its checksum over the pseudo-header.
    fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = match self.l4 {
            L4v6::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
            } => {
                let mut h = Vec::new();
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&seq.to_be_bytes());
                h.extend_from_slice(&ack.to_be_bytes());
                h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
                h
            }
            L4v6::Udp { sport, dport } => {
                let len = (8 + self.payload.len()) as u16;
                let mut h = Vec::new();
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&len.to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h
            }
            L4v6::Echo { kind, id, seq } => {
                let mut h = vec![kind, 0, 0, 0];
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&seq.to_be_bytes());
                h
            }
            L4v6::Icmp { kind } => vec![kind, 0, 0, 0, 0, 0, 0, 0],
            L4v6::Raw { .. } => return self.payload.clone(),
        };
        l4.extend_from_slice(&self.payload);
        let csum_at = match self.l4 {
            L4v6::Tcp { .. } => 16,
            L4v6::Udp { .. } => 6,
            _ => 2,
        };
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, self.proto()]);
        let mut csum = fold(sum16(&pseudo) + sum16(&l4));
        if csum == 0 && matches!(self.l4, L4v6::Udp { .. }) {
            csum = 0xffff;
        }
        l4[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
        l4
    }

    fn build(&self) -> Vec<u8> {
        let mut ext = Vec::new();
        let kinds: Vec<u8> = self
            .ext
            .iter()
            .map(|e| e.kind)
            .chain(std::iter::once(self.proto()))
            .collect();
        for (i, e) in self.ext.iter().enumerate() {
            let mut body = e.body.clone();
            while (body.len() + 2) % 8 != 0 {
                body.push(0);
            }
            ext.push(kinds[i + 1]);
            ext.push(((body.len() + 2) / 8 - 1) as u8);
            ext.extend_from_slice(&body);
        }
        let l4 = self.l4_bytes();
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        f.push(kinds[0]);
        f.push(self.hop_limit);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        f.extend_from_slice(&ext);
        f.extend_from_slice(&l4);
        f
    }

    fn with_src(&self, src: &str, sport: u16) -> Self {
        let mut g = self.clone();
        g.src = src.parse().unwrap();
        g.l4 = with_port(g.l4, Some(sport), None);
        g
    }

    fn with_dst(&self, dst: &str, dport: u16) -> Self {
        let mut g = self.clone();
        g.dst = dst.parse().unwrap();
        g.l4 = with_port(g.l4, None, Some(dport));
        g
    }
}

fn with_port(l4: L4v6, sport: Option<u16>, dport: Option<u16>) -> L4v6 {
    match l4 {
        L4v6::Tcp {
            sport: s,
            dport: d,
            flags,
            seq,
            ack,
        } => L4v6::Tcp {
            sport: sport.unwrap_or(s),
            dport: dport.unwrap_or(d),
            flags,
            seq,
            ack,
        },
        L4v6::Udp { sport: s, dport: d } => L4v6::Udp {
            sport: sport.unwrap_or(s),
            dport: dport.unwrap_or(d),
        },
        L4v6::Echo { kind, id, seq } => L4v6::Echo {
            kind,
            id: sport.or(dport).unwrap_or(id),
            seq,
        },
        other => other,
    }
}

/// A datapath with an external IPv6 address and the containers' subnet fd00:18::/64.
fn datapath6() -> Datapath {
    let mut dp = datapath(None);
    dp.set_external6(Some(EXTERNAL6.parse().unwrap()))
        .expect("external6");
    dp.add_bridge_nets6(0, &["fd00:18::/64".parse().unwrap()])
        .expect("subnet6");
    dp
}

fn tcp(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> L4v6 {
    L4v6::Tcp {
        sport,
        dport,
        flags,
        seq,
        ack,
    }
}

/// Out and back for TCP, UDP and ICMPv6 echo: the source becomes the uplink's IPv6 address
/// with the port kept, the reply goes back to the container, every checksum right.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_outbound_and_reply_table() {
    let _slot = require_root();
    let mut dp = datapath6();
    let rows = [
        (
            "tcp",
            Frame6::new(C1, REMOTE6, tcp(40000, 443, SYN, 1000, 0)),
            Frame6::new(REMOTE6, EXTERNAL6, tcp(443, 40000, SYN_ACK, 5000, 1001)),
            40000u16,
        ),
        (
            "udp",
            Frame6::new(
                C1,
                REMOTE6,
                L4v6::Udp {
                    sport: 40001,
                    dport: 53,
                },
            ),
            Frame6::new(
                REMOTE6,
                EXTERNAL6,
                L4v6::Udp {
                    sport: 53,
                    dport: 40001,
                },
            ),
            40001,
        ),
        (
            "echo",
            Frame6::new(
                C1,
                REMOTE6,
                L4v6::Echo {
                    kind: 128,
                    id: 77,
                    seq: 1,
                },
            ),
            Frame6::new(
                REMOTE6,
                EXTERNAL6,
                L4v6::Echo {
                    kind: 129,
                    id: 77,
                    seq: 1,
                },
            ),
            77,
        ),
    ];
    for (case, out, reply, port) in rows {
        let (v, got) = run(&mut dp, names::PROG_EGRESS, &out.build());
        assert_eq!(v, TCX_NEXT, "{case}: out");
        assert_eq!(
            got,
            out.with_src(EXTERNAL6, port).build(),
            "{case}: out, translated"
        );
        let (v, got) = run(&mut dp, names::PROG_INGRESS, &reply.build());
        assert_eq!(v, TCX_NEXT, "{case}: reply");
        assert_eq!(got, reply.with_dst(C1, port).build(), "{case}: reply back");
    }
    assert_eq!(dp.counter(Counter::NewMappings).unwrap(), 3);
    assert_eq!(dp.counter(Counter::EgressTranslated).unwrap(), 3);
    assert_eq!(dp.counter(Counter::IngressTranslated).unwrap(), 3);
    let now = bpfnat::table::timeouts::monotonic_ns();
    let mut t6 = dp.tables6().unwrap();
    let list = bpfnat::table::conntrack6::list6(&t6, &bpfnat_common::Timeouts::KERNEL, now);
    assert_eq!(list.len(), 3);
    assert!(
        list.iter()
            .all(|c| c.reply_entry.is_some()
                && c.external() == EXTERNAL6.parse::<Ipv6Addr>().unwrap())
    );
    let (expired, _) =
        bpfnat::table::conntrack6::sweep6(&mut t6, &bpfnat_common::Timeouts::KERNEL, now);
    assert_eq!(expired, 0, "nothing is idle yet");
}

/// Extension headers (hop-by-hop, destination options, routing, a first fragment) are
/// walked to the L4 header, which is translated; a later fragment from a container does
/// not leave untranslated.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_extension_headers_are_walked() {
    let _slot = require_root();
    let mut dp = datapath6();
    for (i, kinds) in [vec![0u8], vec![0, 60], vec![43], vec![60, 44]]
        .into_iter()
        .enumerate()
    {
        let mut out = Frame6::new(C1, REMOTE6, tcp(41000 + i as u16, 80, SYN, 1, 0));
        out.ext = kinds
            .iter()
            .map(|&kind| Ext {
                kind,
                // A fragment header's body: offset 0, more fragments, an identification.
                body: if kind == 44 {
                    vec![0, 1, 0, 0, 0, 7]
                } else {
                    vec![1, 4, 0, 0, 0, 0]
                },
            })
            .collect();
        let (v, got) = run(&mut dp, names::PROG_EGRESS, &out.build());
        assert_eq!(v, TCX_NEXT, "{kinds:?}");
        assert_eq!(
            got,
            out.with_src(EXTERNAL6, 41000 + i as u16).build(),
            "{kinds:?}: translated behind its extension headers"
        );
    }
    // A later fragment (offset 8) of a container's datagram: dropped, not leaked.
    let mut later = Frame6::new(C1, REMOTE6, L4v6::Udp { sport: 1, dport: 2 });
    later.ext = vec![Ext {
        kind: 44,
        body: vec![0, 8, 0, 0, 0, 9],
    }];
    assert_eq!(
        run(&mut dp, names::PROG_EGRESS, &later.build()).0,
        TC_ACT_SHOT
    );
    assert_eq!(dp.counter(Counter::DropFragmentUnknown).unwrap(), 1);
}

/// What is not ours passes untouched (the host's own flows, neighbour discovery, echo
/// requests from outside); what would leak or reach a container directly is dropped.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_passes_and_drops_table() {
    let _slot = require_root();
    let mut dp = datapath6();
    let ns = L4v6::Icmp { kind: 135 };
    let rows = [
        (
            "the host's own flow",
            names::PROG_EGRESS,
            Frame6::new(EXTERNAL6, REMOTE6, tcp(50000, 443, SYN, 1, 0)),
            TCX_NEXT,
        ),
        (
            "neighbour solicitation",
            names::PROG_EGRESS,
            Frame6::new("fe80::1", "ff02::1:ff00:1", ns),
            TCX_NEXT,
        ),
        (
            "neighbour solicitation in",
            names::PROG_INGRESS,
            Frame6::new("fe80::9", "ff02::1:ff00:2", ns),
            TCX_NEXT,
        ),
        (
            "an echo request to the host",
            names::PROG_INGRESS,
            Frame6::new(
                REMOTE6,
                EXTERNAL6,
                L4v6::Echo {
                    kind: 128,
                    id: 5,
                    seq: 1,
                },
            ),
            TCX_NEXT,
        ),
        (
            "a container's ICMPv6 error",
            names::PROG_EGRESS,
            Frame6::new(C1, REMOTE6, L4v6::Icmp { kind: 1 }),
            TC_ACT_SHOT,
        ),
        (
            "direct access to a container",
            names::PROG_INGRESS,
            Frame6::new(REMOTE6, C1, tcp(50001, 22, SYN, 1, 0)),
            TC_ACT_SHOT,
        ),
        (
            "a stray segment to the uplink",
            names::PROG_INGRESS,
            Frame6::new(REMOTE6, EXTERNAL6, tcp(50002, 40999, ACK, 1, 1)),
            TC_ACT_SHOT,
        ),
    ];
    for (case, prog, frame, verdict) in rows {
        let input = frame.build();
        let (v, got) = run(&mut dp, prog, &input);
        assert_eq!(v, verdict, "{case}");
        if v == TCX_NEXT {
            assert_eq!(got, input, "{case}: untouched");
        }
    }
    assert_eq!(dp.counter(Counter::NewMappings).unwrap(), 0);
    assert_eq!(dp.counter(Counter::DropUntranslatable).unwrap(), 1);
    assert_eq!(dp.counter(Counter::DropDirectAccess).unwrap(), 1);
    assert_eq!(dp.counter(Counter::DropStrayTcp).unwrap(), 1);
}

/// The original port taken (a mapping holds its reply tuple): another one of its class.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_port_conflict_picks_another_port_in_class() {
    let _slot = require_root();
    let mut dp = datapath6();
    let first = Frame6::new(C1, REMOTE6, tcp(42000, 443, SYN, 1, 0));
    let second = Frame6::new("fd00:18::3", REMOTE6, tcp(42000, 443, SYN, 1, 0));
    let (_, got) = run(&mut dp, names::PROG_EGRESS, &first.build());
    assert_eq!(got, first.with_src(EXTERNAL6, 42000).build());
    let (v, got) = run(&mut dp, names::PROG_EGRESS, &second.build());
    let drops: Vec<_> = Counter::ALL
        .iter()
        .map(|c| (c.name(), dp.counter(*c).unwrap()))
        .filter(|(name, n)| *n > 0 && name.starts_with("drop"))
        .collect();
    assert_eq!(v, TCX_NEXT, "{drops:?}");
    let port = u16::from_be_bytes([got[54], got[55]]);
    assert!(port >= 1024 && port != 42000, "port {port}");
    assert_eq!(got, second.with_src(EXTERNAL6, port).build());
    assert!(dp.counter(Counter::PortRetries).unwrap() >= 1);
}

/// An ICMPv6 error `kind` from `src` to `dst` quoting `quoted` (its IPv6 packet, without the
/// Ethernet header).
fn icmp6_error(kind: u8, src: &str, dst: &str, quoted: &Frame6) -> Frame6 {
    let mut f = Frame6::new(src, dst, L4v6::Icmp { kind });
    f.payload = quoted.build()[14..].to_vec();
    f
}

/// ICMPv6 errors about translated flows, both ways: a "destination unreachable", "packet too
/// big" or "time exceeded" for a packet we sent for a container reaches the container quoting
/// what it sent; a container's "port
/// unreachable" about a reply leaves quoting our external address and port. Errors about
/// nothing of ours pass untouched (the host's own) or, from a container, are dropped.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_icmp_errors_are_translated_both_ways() {
    let _slot = require_root();
    let mut dp = datapath6();
    let udp = |sport, dport| L4v6::Udp { sport, dport };
    for (case, quoted_l4) in [
        ("udp", udp(40005, 53)),
        ("tcp", tcp(40007, 443, SYN, 9, 0)),
        (
            "echo",
            L4v6::Echo {
                kind: 128,
                id: 99,
                seq: 3,
            },
        ),
    ] {
        let out = Frame6::new(C1, REMOTE6, quoted_l4);
        let port = match quoted_l4 {
            L4v6::Tcp { sport, .. } | L4v6::Udp { sport, .. } => sport,
            L4v6::Echo { id, .. } => id,
            _ => unreachable!(),
        };
        let (_, sent) = run(&mut dp, names::PROG_EGRESS, &out.build());
        assert_eq!(sent, out.with_src(EXTERNAL6, port).build(), "{case}");
        // From a router on the way, quoting what left the uplink: destination unreachable
        // (1), packet too big (2, path-MTU discovery), time exceeded (3, traceroute6).
        for kind in [1, 2, 3] {
            let error = icmp6_error(
                kind,
                "2001:db8::1",
                EXTERNAL6,
                &out.with_src(EXTERNAL6, port),
            );
            let (v, got) = run(&mut dp, names::PROG_INGRESS, &error.build());
            assert_eq!(v, TCX_NEXT, "{case} type {kind}");
            assert_eq!(
                got,
                icmp6_error(kind, "2001:db8::1", C1, &out).build(),
                "{case} type {kind}: to the container, quoting what it sent"
            );
        }
    }
    assert_eq!(dp.counter(Counter::IcmpErrorsTranslated).unwrap(), 9);

    // A container's port unreachable about a reply it got.
    let out = Frame6::new(C1, REMOTE6, udp(40006, 53));
    run(&mut dp, names::PROG_EGRESS, &out.build());
    let reply_in = Frame6::new(REMOTE6, C1, udp(53, 40006));
    let unreachable = icmp6_error(1, C1, REMOTE6, &reply_in);
    let (v, got) = run(&mut dp, names::PROG_EGRESS, &unreachable.build());
    assert_eq!(v, TCX_NEXT);
    assert_eq!(
        got,
        icmp6_error(1, EXTERNAL6, REMOTE6, &reply_in.with_dst(EXTERNAL6, 40006)).build(),
        "leaves with our address and port, in the quote too"
    );
    assert_eq!(dp.counter(Counter::IcmpErrorsTranslated).unwrap(), 10);

    // About no mapping: the host's own error passes; a container's is dropped.
    let stranger = Frame6::new(EXTERNAL6, REMOTE6, udp(7, 7));
    let theirs = icmp6_error(1, "2001:db8::1", EXTERNAL6, &stranger).build();
    assert_eq!(
        run(&mut dp, names::PROG_INGRESS, &theirs),
        (TCX_NEXT, theirs.clone())
    );
    let leak = icmp6_error(1, C1, REMOTE6, &Frame6::new(REMOTE6, C1, udp(9, 9))).build();
    assert_eq!(run(&mut dp, names::PROG_EGRESS, &leak).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::IcmpErrorsTranslated).unwrap(), 10);
}

/// Bridge 1000 (fd00:18::/64, gateway fd00:18::1) with `flags`, its port 1 (the test run's
/// device), and bridge 1001 (fd00:19::/64).
fn bridged6(flags: u32) -> Datapath {
    let mut dp = datapath6();
    let info = |gw: [u8; 4], gw6: &str, flags| bpfnat_common::BridgeInfo {
        gateway: bpfnat_common::addr_to_map(gw),
        flags,
        mac: [2, 0, 0, 0, 0, 0xb1],
        pad: [0; 2],
        gateway6: bpfnat_common::addr6_to_map(gw6.parse::<Ipv6Addr>().unwrap().octets()),
    };
    dp.add_bridge(1000, info([172, 18, 0, 1], "fd00:18::1", flags), &[])
        .unwrap();
    dp.add_bridge_nets6(1000, &["fd00:18::/64".parse().unwrap()])
        .unwrap();
    dp.add_bridge(1001, info([172, 19, 0, 1], "fd00:19::1", 0), &[])
        .unwrap();
    dp.add_bridge_nets6(1001, &["fd00:19::/64".parse().unwrap()])
        .unwrap();
    dp.add_port(1, 1000).unwrap();
    dp
}

/// The bridge-port program's IPv6 policy and source checks: a container sends from its own
/// subnet only (never the gateway's address, not even in a neighbour advertisement's
/// target); another bridge is out of reach; icc=false keeps neighbours apart but not the
/// gateway; an internal bridge reaches its gateway only; link-local and multicast stay on the
/// link untouched.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_port_policy_table() {
    use bpfnat_common::{BRIDGE_ICC_OFF, BRIDGE_INTERNAL};
    let _slot = require_root();
    let out = |src: &str, dst: &str| Frame6::new(src, dst, tcp(45000, 80, SYN, 1, 0));
    let mut na = Frame6::new("fe80::2", "ff02::1", L4v6::Icmp { kind: 136 });
    na.payload = "fd00:18::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
    let ns = Frame6::new("::", "ff02::1:ff00:2", L4v6::Icmp { kind: 135 });
    let rows: [(&str, u32, Frame6, u32, Option<Counter>); 12] = [
        ("out", 0, out(C1, REMOTE6), TCX_NEXT, None),
        ("to the gateway", 0, out(C1, "fd00:18::1"), TCX_NEXT, None),
        ("a neighbour", 0, out(C1, "fd00:18::3"), TCX_NEXT, None),
        ("DAD probe", 0, ns, TCX_NEXT, None),
        (
            "spoofed: outside the subnet",
            0,
            out("fd00:99::2", REMOTE6),
            TC_ACT_SHOT,
            Some(Counter::DropSpoofed),
        ),
        (
            "spoofed: the gateway",
            0,
            out("fd00:18::1", REMOTE6),
            TC_ACT_SHOT,
            Some(Counter::DropSpoofed),
        ),
        (
            "advertising the gateway's address",
            0,
            na,
            TC_ACT_SHOT,
            Some(Counter::DropSpoofed),
        ),
        (
            "another bridge",
            0,
            out(C1, "fd00:19::5"),
            TC_ACT_SHOT,
            Some(Counter::DropIsolation),
        ),
        (
            "icc off: a neighbour",
            BRIDGE_ICC_OFF,
            out(C1, "fd00:18::3"),
            TC_ACT_SHOT,
            Some(Counter::DropIcc),
        ),
        (
            "icc off: the gateway",
            BRIDGE_ICC_OFF,
            out(C1, "fd00:18::1"),
            TCX_NEXT,
            None,
        ),
        (
            "internal: out",
            BRIDGE_INTERNAL,
            out(C1, REMOTE6),
            TC_ACT_SHOT,
            Some(Counter::DropInternal),
        ),
        (
            "internal: the gateway",
            BRIDGE_INTERNAL,
            out(C1, "fd00:18::1"),
            TCX_NEXT,
            None,
        ),
    ];
    for (case, flags, frame, verdict, counter) in rows {
        let mut dp = bridged6(flags);
        let input = frame.build();
        let (v, got) = run(&mut dp, names::PROG_PORT, &input);
        assert_eq!(v, verdict, "{case}");
        if v == TCX_NEXT {
            assert_eq!(got, input, "{case}: untouched");
        }
        if let Some(c) = counter {
            assert_eq!(dp.counter(c).unwrap(), 1, "{case}: {}", c.name());
        }
    }
}

/// A port published on the uplink's IPv6 address (Docker's `-p [::]:8080:80`): the
/// container sees the client's own address, its answers leave from the published port;
/// only a SYN opens a connection; a port published into an internal network is never used.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_published_port_keeps_the_client_address() {
    let _slot = require_root();
    let mut dp = datapath6();
    publish_8080_to_c1(&mut dp);
    const CLIENT6: &str = "2001:db8:200::9";
    let syn = Frame6::new(CLIENT6, EXTERNAL6, tcp(50000, 8080, SYN, 100, 0));
    let (v, got) = run(&mut dp, names::PROG_INGRESS, &syn.build());
    assert_eq!(v, TCX_NEXT);
    assert_eq!(
        got,
        syn.with_dst(C1, 80).build(),
        "to the container, client kept"
    );
    let answer = Frame6::new(C1, CLIENT6, tcp(80, 50000, SYN_ACK, 700, 101));
    let (v, got) = run(&mut dp, names::PROG_EGRESS, &answer.build());
    assert_eq!(v, TCX_NEXT);
    assert_eq!(
        got,
        answer.with_src(EXTERNAL6, 8080).build(),
        "from the published port"
    );
    let ack = Frame6::new(CLIENT6, EXTERNAL6, tcp(50000, 8080, ACK, 101, 701));
    let (_, got) = run(&mut dp, names::PROG_INGRESS, &ack.build());
    assert_eq!(got, ack.with_dst(C1, 80).build());
    // A mid-stream segment of no connection: dropped, nothing created.
    let stray = Frame6::new(CLIENT6, EXTERNAL6, tcp(50001, 8080, ACK, 5, 5));
    assert_eq!(
        run(&mut dp, names::PROG_INGRESS, &stray.build()).0,
        TC_ACT_SHOT
    );
    assert_eq!(dp.counter(Counter::PublishedMappings).unwrap(), 1);
    assert_eq!(dp.counter(Counter::DropStrayTcp).unwrap(), 1);
    let now = bpfnat::table::timeouts::monotonic_ns();
    let t6 = dp.tables6().unwrap();
    let list = bpfnat::table::conntrack6::list6(&t6, &bpfnat_common::Timeouts::KERNEL, now);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].src(), C1.parse::<Ipv6Addr>().unwrap());
    assert!(list[0].reply_entry.is_some());
}

/// A fragment header's body: offset (in 8-byte units) and the more-fragments flag, then the
/// identification.
fn fragment(offset_units: u16, more: bool, id: u32) -> Ext {
    let mut body = (offset_units << 3 | u16::from(more)).to_be_bytes().to_vec();
    body.extend_from_slice(&id.to_be_bytes());
    Ext { kind: 44, body }
}

/// A fragmented UDP datagram each way: the first fragment is translated with its ports and
/// its later fragments follow with the same address (out: the external one; back: the
/// container's); a later fragment of a datagram never seen from a container is dropped, one
/// to the uplink's address is the host's own and passes.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_fragments_follow_their_first() {
    let _slot = require_root();
    let mut dp = datapath6();
    let udp = L4v6::Udp {
        sport: 40100,
        dport: 53,
    };
    let mut first = Frame6::new(C1, REMOTE6, udp);
    first.ext = vec![fragment(0, true, 0x1234)];
    let mut later = Frame6::new(C1, REMOTE6, L4v6::Raw { proto: 17 });
    later.ext = vec![fragment(4, false, 0x1234)];
    later.payload = vec![0x55; 40];
    let (v, got) = run(&mut dp, names::PROG_EGRESS, &first.build());
    assert_eq!(v, TCX_NEXT);
    assert_eq!(got, first.with_src(EXTERNAL6, 40100).build());
    let (v, got) = run(&mut dp, names::PROG_EGRESS, &later.build());
    assert_eq!(v, TCX_NEXT);
    let mut want = later.clone();
    want.src = EXTERNAL6.parse().unwrap();
    assert_eq!(got, want.build(), "the later fragment follows");

    // The answer, fragmented too.
    let mut back = Frame6::new(
        REMOTE6,
        EXTERNAL6,
        L4v6::Udp {
            sport: 53,
            dport: 40100,
        },
    );
    back.ext = vec![fragment(0, true, 0x9999)];
    let mut back_later = Frame6::new(REMOTE6, EXTERNAL6, L4v6::Raw { proto: 17 });
    back_later.ext = vec![fragment(4, false, 0x9999)];
    let (_, got) = run(&mut dp, names::PROG_INGRESS, &back.build());
    assert_eq!(got, back.with_dst(C1, 40100).build());
    let (v, got) = run(&mut dp, names::PROG_INGRESS, &back_later.build());
    assert_eq!(v, TCX_NEXT);
    let mut want = back_later.clone();
    want.dst = C1.parse().unwrap();
    assert_eq!(
        got,
        want.build(),
        "the later fragment of the answer follows"
    );
    assert_eq!(dp.counter(Counter::FragmentsTranslated).unwrap(), 2);

    // Unknown datagrams: a container's is dropped, the host's own passes.
    let mut stray = later.clone();
    stray.ext = vec![fragment(4, false, 0x7777)];
    assert_eq!(
        run(&mut dp, names::PROG_EGRESS, &stray.build()).0,
        TC_ACT_SHOT
    );
    let mut hosts = back_later.clone();
    hosts.ext = vec![fragment(4, false, 0x4242)];
    let input = hosts.build();
    assert_eq!(
        run(&mut dp, names::PROG_INGRESS, &input),
        (TCX_NEXT, input.clone())
    );
}

/// The IPv6 fast path on the way in: a translated reply for a container of a served bridge
/// is handed to it directly (redirected, hop limit decremented as a router does); one whose
/// hop limit runs out at the host is dropped rather than answered with a time-exceeded that
/// would quote the container's address.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_replies_go_straight_to_the_container() {
    let _slot = require_root();
    let mut dp = bridged6(0);
    let udp = |sport, dport| L4v6::Udp { sport, dport };
    let out = Frame6::new(C1, REMOTE6, udp(40200, 53));
    // Its port learns it (the port program), then the uplink masquerades it.
    run(&mut dp, names::PROG_PORT, &out.build());
    run(&mut dp, names::PROG_EGRESS, &out.build());
    let reply = Frame6::new(REMOTE6, EXTERNAL6, udp(53, 40200));
    let (v, got) = run(&mut dp, names::PROG_INGRESS, &reply.build());
    assert_eq!(v, TC_ACT_REDIRECT);
    let mut want = reply.with_dst(C1, 40200);
    want.hop_limit -= 1;
    assert_eq!(
        got[14..],
        want.build()[14..],
        "translated, hop limit decremented"
    );
    assert_eq!(got[0..6], [2, 0, 0, 0, 0, 2], "to the container's MAC");

    let mut dying = Frame6::new(REMOTE6, EXTERNAL6, udp(53, 40200));
    dying.hop_limit = 1;
    assert_eq!(
        run(&mut dp, names::PROG_INGRESS, &dying.build()).0,
        TC_ACT_SHOT
    );
    assert_eq!(dp.counter(Counter::DropTtlExceeded).unwrap(), 1);
}

/// Early drop on IPv6: SYNs from forged sources to an IPv6 published port hold at most the
/// ring's slots (a quarter of the table: 1,024 of 4,096 here); an answered connection is
/// never evicted.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_unanswered_syns_are_early_dropped_answered_ones_kept() {
    let _slot = require_root();
    let mut dp = datapath6();
    publish_8080_to_c1(&mut dp);
    // One real client, answered and acknowledged.
    let client = "2001:db8:300::1";
    let syn = Frame6::new(client, EXTERNAL6, tcp(50000, 8080, SYN, 1, 0));
    run(&mut dp, names::PROG_INGRESS, &syn.build());
    let syn_ack = Frame6::new(C1, client, tcp(80, 50000, SYN_ACK, 9, 2));
    run(&mut dp, names::PROG_EGRESS, &syn_ack.build());
    let ack = Frame6::new(client, EXTERNAL6, tcp(50000, 8080, ACK, 2, 10));
    run(&mut dp, names::PROG_INGRESS, &ack.build());
    // 1,500 SYNs from forged sources, never answered.
    for i in 0..1500u32 {
        let src = format!("2001:db8:400::{:x}:{:x}", i >> 16, i & 0xffff);
        let f = Frame6::new(&src, EXTERNAL6, tcp(40000, 8080, SYN, i, 0));
        run(&mut dp, names::PROG_INGRESS, &f.build());
    }
    let early = dp.counter(Counter::EarlyDrops).unwrap();
    // 1,501 connections through a ring of 1,024: 477 evictions are due, and one of them
    // meets the answered connection, which stays.
    assert_eq!(early, 1500 - 1024, "early_drops");
    let t6 = dp.tables6().unwrap();
    let now = bpfnat::table::timeouts::monotonic_ns();
    let list = bpfnat::table::conntrack6::list6(&t6, &bpfnat_common::Timeouts::KERNEL, now);
    assert!(list.len() <= 1024 + 1, "{} mappings", list.len());
    let real = list
        .iter()
        .find(|c| u16::from_be(c.original.dst_port) == 50000)
        .expect("the answered connection is kept");
    assert!(real.reply_entry.is_some());
}

/// Publish TCP port 8080 of the uplink's IPv6 address to C1's port 80.
fn publish_8080_to_c1(dp: &mut Datapath) {
    let c1 = bpfnat_common::addr6_to_map(C1.parse::<Ipv6Addr>().unwrap().octets());
    dp.publish6(
        bpfnat_common::PublishKey6 {
            host_port: 8080u16.to_be(),
            proto: 6,
            pad: 0,
        },
        bpfnat_common::PublishTarget6 {
            addr: c1,
            port: 80u16.to_be(),
            pad: 0,
        },
    )
    .unwrap();
}

/// Publish `proto` port `host_port` of the uplink's IPv6 address to `ctr`'s `ctr_port`.
fn publish6(dp: &mut Datapath, proto: u8, host_port: u16, ctr: &str, ctr_port: u16) {
    dp.publish6(
        bpfnat_common::PublishKey6 {
            host_port: host_port.to_be(),
            proto,
            pad: 0,
        },
        bpfnat_common::PublishTarget6 {
            addr: bpfnat_common::addr6_to_map(ctr.parse::<Ipv6Addr>().unwrap().octets()),
            port: ctr_port.to_be(),
            pad: 0,
        },
    )
    .unwrap();
}

/// `got` equals `want` with its hop limit decremented (a router's forwarding), from the
/// EtherType on: the MACs are the delivery's (checked apart).
fn assert_forwarded6(got: &[u8], want: &Frame6, case: &str) {
    let mut want = want.clone();
    want.hop_limit -= 1;
    assert_eq!(got[12..], want.build()[12..], "{case}");
}

/// The frame with both ends rewritten.
fn rewritten(f: &Frame6, src: &str, sport: u16, dst: &str, dport: u16) -> Frame6 {
    f.with_src(src, sport).with_dst(dst, dport)
}

const GW6: &str = "fd00:18::1";
const C2: &str = "fd00:18::3";

/// Hairpin over IPv6: a container reaching a port published on the uplink's IPv6 address
/// through that address gets the published container, with the bridge's IPv6 gateway as
/// source (the gateway port is its own when free), so that the answer comes back through the
/// host and is turned back into the address it asked for. TCP from another container and
/// from the published one itself, UDP; later packets of the connection follow its entries;
/// every checksum is recomputed from scratch by the expected frame.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_hairpin_table() {
    let _slot = require_root();
    let udp = |sport, dport| L4v6::Udp { sport, dport };
    let rows = [
        (
            "tcp from another container",
            Frame6::new(C2, EXTERNAL6, tcp(45000, 8080, SYN, 1000, 0)),
            Frame6::new(C1, GW6, tcp(80, 45000, SYN_ACK, 5000, 1001)),
            Frame6::new(C2, EXTERNAL6, tcp(45000, 8080, ACK, 1001, 5001)),
            80u16,
        ),
        (
            "tcp from the published container",
            Frame6::new(C1, EXTERNAL6, tcp(45001, 8080, SYN, 1000, 0)),
            Frame6::new(C1, GW6, tcp(80, 45001, SYN_ACK, 5000, 1001)),
            Frame6::new(C1, EXTERNAL6, tcp(45001, 8080, ACK, 1001, 5001)),
            80,
        ),
        (
            "udp from another container",
            Frame6::new(C2, EXTERNAL6, udp(45002, 5353)),
            Frame6::new(C1, GW6, udp(53, 45002)),
            Frame6::new(C2, EXTERNAL6, udp(45002, 5353)),
            53,
        ),
    ];
    for (case, ask, answer, again, target_port) in rows {
        let mut dp = bridged6(0);
        publish6(&mut dp, 6, 8080, C1, 80);
        publish6(&mut dp, 17, 5353, C1, 53);
        let (client, sport, host_port) = match ask.l4 {
            L4v6::Tcp { sport, dport, .. } | L4v6::Udp { sport, dport } => (ask.src, sport, dport),
            _ => unreachable!(),
        };
        let client = client.to_string();
        let (v, got) = run(&mut dp, names::PROG_PORT, &ask.build());
        assert_eq!(v, TC_ACT_REDIRECT, "{case}: to the published container");
        let want = rewritten(&ask, GW6, sport, C1, target_port);
        assert_forwarded6(&got, &want, &format!("{case}: first packet"));

        let (v, got) = run(&mut dp, names::PROG_PORT, &answer.build());
        assert_eq!(v, TC_ACT_REDIRECT, "{case}: answer back");
        let want = rewritten(&answer, EXTERNAL6, host_port, &client, sport);
        assert_forwarded6(&got, &want, &format!("{case}: answer"));
        // The asking container was learned from its request: straight to its MAC, from the
        // bridge's.
        assert_eq!(
            got[0..12],
            [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 0xb1],
            "{case}"
        );

        let (v, got) = run(&mut dp, names::PROG_PORT, &again.build());
        assert_eq!(v, TC_ACT_REDIRECT, "{case}: next packet");
        let want = rewritten(&again, GW6, sport, C1, target_port);
        assert_forwarded6(&got, &want, &format!("{case}: next packet"));
        assert_eq!(dp.counter(Counter::HairpinTranslated).unwrap(), 3, "{case}");
        assert_eq!(dp.hairpin6_map().unwrap().keys().count(), 2, "{case}");
        assert_eq!(dp.counter(Counter::NewMappings).unwrap(), 0, "{case}");
    }
}

/// The edges of IPv6 hairpin: a gateway port another hairpin connection holds is not given
/// twice (the second connection gets another, and its answers still find their way); a
/// container of another bridge is reached from that bridge's gateway; ICMPv6 and unpublished
/// ports are the host's, untouched; an internal bridge reaches its gateway but not the
/// uplink's address; a FIN is recorded for expiry, which removes both directions together;
/// unpublishing removes the connections made through the port.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_hairpin_edges() {
    use bpfnat::table::{
        expiry::sweep_hairpin,
        publish6::{remove6, Flows6, Publish6Spec},
    };
    use bpfnat_common::{wire::TCP_FIN, Timeouts, BRIDGE_INTERNAL};
    let _slot = require_root();
    let mut dp = bridged6(0);
    publish6(&mut dp, 6, 8080, C1, 80);
    // C1 and C2 from the same port: C2's answer tuple (C1:80 -> gateway:46000) is taken.
    let first = Frame6::new(C1, EXTERNAL6, tcp(46000, 8080, SYN, 1, 0));
    let (v, got) = run(&mut dp, names::PROG_PORT, &first.build());
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_forwarded6(&got, &rewritten(&first, GW6, 46000, C1, 80), "first");
    let second = Frame6::new(C2, EXTERNAL6, tcp(46000, 8080, SYN, 1, 0));
    let (v, got) = run(&mut dp, names::PROG_PORT, &second.build());
    assert_eq!(v, TC_ACT_REDIRECT);
    // The TCP source port follows the 54-byte Ethernet + IPv6 header.
    let gw_port = u16::from_be_bytes([got[54], got[55]]);
    assert_ne!(gw_port, 46000, "a held gateway port given twice");
    assert!(gw_port > 1024);
    assert_forwarded6(&got, &rewritten(&second, GW6, gw_port, C1, 80), "second");
    let answer = Frame6::new(C1, GW6, tcp(80, gw_port, SYN_ACK, 9, 2));
    let (v, got) = run(&mut dp, names::PROG_PORT, &answer.build());
    assert_eq!(v, TC_ACT_REDIRECT);
    let want = rewritten(&answer, EXTERNAL6, 8080, C2, 46000);
    assert_forwarded6(&got, &want, "the second's answer");

    // A FIN is recorded on its direction; expiry leaves open connections alone and takes
    // an idle one whole (both directions) once its timeout is past.
    let fin = Frame6::new(C2, EXTERNAL6, tcp(46000, 8080, FIN | ACK, 2, 10));
    run(&mut dp, names::PROG_PORT, &fin.build());
    let ask_key = bpfnat_common::FlowKey6::new(
        bpfnat_common::addr6_to_map(C2.parse::<Ipv6Addr>().unwrap().octets()),
        bpfnat_common::addr6_to_map(EXTERNAL6.parse::<Ipv6Addr>().unwrap().octets()),
        46000u16.to_be(),
        8080u16.to_be(),
        6,
    );
    let entry = dp.hairpin6_map().unwrap().get(&ask_key, 0).unwrap();
    assert_eq!(entry.tcp_flags, TCP_FIN, "the FIN recorded");
    assert_eq!(
        sweep_hairpin(&mut dp.hairpin6_map().unwrap(), &Timeouts::KERNEL),
        0
    );
    let mut short = Timeouts::KERNEL;
    short.tcp_fin_wait = 0;
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(
        sweep_hairpin(&mut dp.hairpin6_map().unwrap(), &short),
        1,
        "the closing connection, both directions"
    );
    assert_eq!(dp.hairpin6_map().unwrap().keys().count(), 2, "C1's stays");

    // Unpublishing removes C1's connection too.
    {
        let (mut map, tables, hairpin) = dp.publish6_tables().unwrap();
        let mut flows = Flows6 { tables, hairpin };
        let spec = Publish6Spec::parse("8080").unwrap();
        let (ports, conns) = remove6(&mut map, &mut flows, &spec).unwrap();
        assert_eq!((ports, conns), (1, 1));
    }
    assert_eq!(dp.hairpin6_map().unwrap().keys().count(), 0);
    let late = Frame6::new(C1, EXTERNAL6, tcp(46000, 8080, ACK, 2, 10));
    let input = late.build();
    assert_eq!(
        run(&mut dp, names::PROG_PORT, &input),
        (TCX_NEXT, input.clone()),
        "no hairpin after the publish went"
    );

    // Another bridge's container: sourced from that bridge's gateway.
    let mut dp = bridged6(0);
    publish6(&mut dp, 17, 5353, "fd00:19::5", 53);
    let ask = Frame6::new(
        C2,
        EXTERNAL6,
        L4v6::Udp {
            sport: 47000,
            dport: 5353,
        },
    );
    let (v, got) = run(&mut dp, names::PROG_PORT, &ask.build());
    assert_eq!(v, TC_ACT_REDIRECT);
    let want = rewritten(&ask, "fd00:19::1", 47000, "fd00:19::5", 53);
    assert_forwarded6(&got, &want, "across bridges");

    // The host's own: ICMPv6 echo to the uplink's address, an unpublished port, the
    // gateway's services.
    let echo = Frame6::new(
        C2,
        EXTERNAL6,
        L4v6::Echo {
            kind: 128,
            id: 5,
            seq: 1,
        },
    );
    for (case, f) in [
        ("echo", echo),
        (
            "unpublished",
            Frame6::new(C2, EXTERNAL6, tcp(47001, 22, SYN, 1, 0)),
        ),
        ("gateway", Frame6::new(C2, GW6, tcp(47002, 53, SYN, 1, 0))),
    ] {
        let input = f.build();
        assert_eq!(
            run(&mut dp, names::PROG_PORT, &input),
            (TCX_NEXT, input.clone()),
            "{case}: untouched"
        );
    }
    assert_eq!(dp.counter(Counter::HairpinTranslated).unwrap(), 1);

    // An internal bridge: its gateway yes, the uplink's address no (not even published).
    let mut dp = bridged6(BRIDGE_INTERNAL);
    publish6(&mut dp, 6, 8080, C1, 80);
    let to_uplink = Frame6::new(C2, EXTERNAL6, tcp(47003, 8080, SYN, 1, 0));
    assert_eq!(
        run(&mut dp, names::PROG_PORT, &to_uplink.build()).0,
        TC_ACT_SHOT
    );
    assert_eq!(dp.counter(Counter::DropInternal).unwrap(), 1);
    let to_gw = Frame6::new(C2, GW6, tcp(47004, 80, SYN, 1, 0)).build();
    assert_eq!(
        run(&mut dp, names::PROG_PORT, &to_gw),
        (TCX_NEXT, to_gw.clone())
    );
    assert_eq!(dp.counter(Counter::HairpinTranslated).unwrap(), 0);
}

/// A gateway port the host itself uses is never given to an IPv6 hairpin connection: with a
/// TCP listener of this process on `[::]:P` (the test run's packets are in this network
/// namespace), a hairpin connection from port P gets another gateway port
/// (`port_host_owned`), and its answer still finds its way back.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_hairpin_avoids_the_hosts_ports() {
    let _slot = require_root();
    let listener = std::net::TcpListener::bind("[::]:0").expect("a listener of the host");
    let port = listener.local_addr().unwrap().port();
    let mut dp = bridged6(0);
    publish6(&mut dp, 6, 8080, C1, 80);
    let ask = Frame6::new(C2, EXTERNAL6, tcp(port, 8080, SYN, 1, 0));
    let (v, got) = run(&mut dp, names::PROG_PORT, &ask.build());
    assert_eq!(v, TC_ACT_REDIRECT);
    let gw_port = u16::from_be_bytes([got[54], got[55]]);
    assert_ne!(
        gw_port, port,
        "the host's port given to a hairpin connection"
    );
    assert_forwarded6(&got, &rewritten(&ask, GW6, gw_port, C1, 80), "first packet");
    assert_eq!(dp.counter(Counter::PortHostOwned).unwrap(), 1);
    let answer = Frame6::new(C1, GW6, tcp(80, gw_port, SYN_ACK, 9, 2));
    let (v, got) = run(&mut dp, names::PROG_PORT, &answer.build());
    assert_eq!(v, TC_ACT_REDIRECT);
    let want = rewritten(&answer, EXTERNAL6, 8080, C2, port);
    assert_forwarded6(&got, &want, "answer");
    drop(listener);
}

/// Removing IPv6 mappings (`conntrack flush`/`delete`, expiry, an address change) goes as for
/// IPv4 (`conntrack`'s module documentation): original half first, and only the halves of
/// the mapping that was listed. Here a mapping is listed, expires, and another container's
/// flow to the same destination from the same port takes its external port (the same reply
/// tuple) before the stale listing is removed: the new flow keeps both halves, and its
/// replies still reach it.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_removing_a_stale_listing_spares_the_flow_that_took_its_port() {
    let _slot = require_root();
    let mut dp = datapath6();
    let udp = |sport, dport| L4v6::Udp { sport, dport };
    let c2 = "fd00:18::3";
    let first = Frame6::new(C1, REMOTE6, udp(40300, 53));
    let (_, got) = run(&mut dp, names::PROG_EGRESS, &first.build());
    assert_eq!(got, first.with_src(EXTERNAL6, 40300).build());
    let now = bpfnat::table::timeouts::monotonic_ns();
    let listed = {
        let t6 = dp.tables6().unwrap();
        bpfnat::table::conntrack6::list6(&t6, &bpfnat_common::Timeouts::KERNEL, now)
    };
    assert_eq!(listed.len(), 1);
    // It expires (both halves go), and C2's flow takes the same external port.
    {
        let mut t6 = dp.tables6().unwrap();
        t6.out.remove(&listed[0].original).unwrap();
        t6.inbound.remove(&listed[0].reply).unwrap();
    }
    let second = Frame6::new(c2, REMOTE6, udp(40300, 53));
    let (_, got) = run(&mut dp, names::PROG_EGRESS, &second.build());
    assert_eq!(got, second.with_src(EXTERNAL6, 40300).build());

    let removed = {
        let mut t6 = dp.tables6().unwrap();
        bpfnat::table::conntrack6::remove6(&mut t6, &listed)
    };
    assert_eq!(removed, 0, "the listed mapping was gone already");
    let reply = Frame6::new(REMOTE6, EXTERNAL6, udp(53, 40300));
    let (v, got) = run(&mut dp, names::PROG_INGRESS, &reply.build());
    assert_eq!(v, TCX_NEXT);
    assert_eq!(
        got,
        reply.with_dst(c2, 40300).build(),
        "the new flow's replies still reach it"
    );
}

/// The window between the two deletions of an IPv6 mapping (as
/// `races::reply_half_taken_back_during_a_flush_survives_it` for IPv4, with the same routine):
/// a packet of the flow arriving after the original half went takes its own reply half back,
/// keeping its port, and the second deletion leaves that reply half in place; a reply half
/// nobody took back stays deleted.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn ipv6_reply_half_taken_back_during_a_flush_survives_it() {
    let _slot = require_root();
    let mut dp = datapath6();
    let f = Frame6::new(C1, REMOTE6, tcp(40600, 80, ACK, 1, 1));
    assert_eq!(run(&mut dp, names::PROG_EGRESS, &f.build()).0, TCX_NEXT);
    let (original, reply_halves) = {
        let t6 = dp.tables6().unwrap();
        let original: Vec<FlowKey6> = t6.out.keys().map(Result::unwrap).collect();
        let halves: Vec<(FlowKey6, NatEntry6)> = t6.inbound.iter().map(Result::unwrap).collect();
        (original[0], halves)
    };
    assert_eq!(reply_halves.len(), 1);
    // The flush's first deletion, then a packet of the flow in the window.
    dp.tables6().unwrap().out.remove(&original).unwrap();
    let (_, got) = run(&mut dp, names::PROG_EGRESS, &f.build());
    assert_eq!(got, f.with_src(EXTERNAL6, 40600).build(), "its own port");
    assert_eq!(dp.counter(Counter::PortRetries).unwrap(), 0);
    // The flush's second deletion, with what it read before.
    let stayed_deleted =
        bpfnat::table::conntrack::remove_reply_halves(&mut dp.tables6().unwrap(), &reply_halves);
    assert_eq!(stayed_deleted, 0, "the taken-back reply half is put back");
    let reply = Frame6::new(REMOTE6, EXTERNAL6, tcp(80, 40600, ACK, 1, 1));
    let (v, got) = run(&mut dp, names::PROG_INGRESS, &reply.build());
    assert_eq!(v, TCX_NEXT);
    assert_eq!(
        got,
        reply.with_dst(C1, 40600).build(),
        "the reply still reaches the flow"
    );

    // A reply half nobody took back stays deleted.
    dp.tables6().unwrap().out.remove(&original).unwrap();
    let stayed_deleted =
        bpfnat::table::conntrack::remove_reply_halves(&mut dp.tables6().unwrap(), &reply_halves);
    assert_eq!(stayed_deleted, 1);
    assert_eq!(dp.tables6().unwrap().inbound.keys().count(), 0);
}
