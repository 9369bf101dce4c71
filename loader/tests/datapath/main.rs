//! Crafted packets through the real programs in the real kernel (`BPF_PROG_TEST_RUN`), a
//! module per concern: [`nat`] (translation both ways, what passes untouched, malformed
//! headers, port choice, accounting), [`table`] (a small range searched exhaustively, a full
//! table), [`tcp`] (connection states, reopening, stray segments), [`icmp`] (ICMP errors),
//! [`frag`] (fragments), [`bridge`] (published ports, bridge policy, hairpin), [`races`]
//! (a flow meeting a flush between its two halves' removals).
//!
//! Each case is a row: a program, an input frame, the expected verdict and the expected output
//! frame. Expected frames are built from scratch by `support::packet`, whose checksums are
//! computed independently of the kernel's incremental helpers, so byte equality checks the
//! rewrite and every checksum at once.
//!
//! `BPF_PROG_TEST_RUN` builds its skb with a full checksum (it cannot create a
//! `CHECKSUM_PARTIAL` skb); the partial-checksum path is covered end to end in `e2e/nat.rs`,
//! where veth traffic carries partial checksums and a hop with TX checksum offload off makes
//! the kernel finish them so the receiver verifies them.

#[path = "../support/mod.rs"]
mod support;

mod bridge;
mod frag;
mod hostile;
mod icmp;
mod ipv6;
mod nat;
mod races;
mod table;
mod tcp;

use support::require_root;

use aya::programs::{TestRun as _, TestRunOptions};
use bpfnat::{
    bpf::datapath::{Datapath, LoadOptions},
    util::addr::PortRange,
};
use bpfnat_common::{
    names,
    wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TCX_NEXT, TC_ACT_REDIRECT, TC_ACT_SHOT},
    Counter, FlowKey, NatEntry,
};
use support::packet::{verify_checksums, Frame, L4};

const EXTERNAL: &str = "203.0.113.2";
const REMOTE: &str = "198.51.100.1";
const NS1: &str = "172.18.0.2";
const NS2: &str = "172.18.0.3";
const SYN: u8 = TCP_SYN;
const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
const FIN: u8 = TCP_FIN;
const RST: u8 = TCP_RST;
const ACK: u8 = TCP_ACK;

fn datapath(ports: Option<PortRange>) -> Datapath {
    let mut dp = Datapath::load(LoadOptions { table_size: 4096 }).expect("load datapath");
    dp.configure(
        EXTERNAL.parse().unwrap(),
        ports,
        &bpfnat_common::Timeouts::KERNEL,
    )
    .expect("configure");
    dp.add_internal_subnet("172.18.0.0/24".parse().unwrap())
        .expect("subnet");
    dp
}

/// Run `prog` on `input`; returns the verdict and the frame as the program left it.
fn run(dp: &mut Datapath, prog: &str, input: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 256];
    let result = dp
        .classifier(prog)
        .expect("program")
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn egress(dp: &mut Datapath, f: &Frame) -> (u32, Vec<u8>) {
    run(dp, names::PROG_EGRESS, &f.build())
}

fn ingress(dp: &mut Datapath, f: &Frame) -> (u32, Vec<u8>) {
    run(dp, names::PROG_INGRESS, &f.build())
}

/// The frame with its source rewritten.
fn with_src(f: &Frame, src: &str, sport: Option<u16>) -> Frame {
    let mut g = f.clone();
    g.src = src.parse().unwrap();
    if let Some(p) = sport {
        g.l4 = match g.l4 {
            L4::Tcp { dport, flags, .. } => L4::Tcp {
                sport: p,
                dport,
                flags,
            },
            L4::Udp { dport, .. } => L4::Udp { sport: p, dport },
            L4::IcmpEcho { kind, seq, .. } => L4::IcmpEcho { kind, id: p, seq },
            other => other,
        };
    }
    g
}

/// The frame with its destination rewritten.
fn with_dst(f: &Frame, dst: &str, dport: Option<u16>) -> Frame {
    let mut g = f.clone();
    g.dst = dst.parse().unwrap();
    if let Some(p) = dport {
        g.l4 = match g.l4 {
            L4::Tcp { sport, flags, .. } => L4::Tcp {
                sport,
                dport: p,
                flags,
            },
            L4::Udp { sport, .. } => L4::Udp { sport, dport: p },
            L4::IcmpEcho { kind, seq, .. } => L4::IcmpEcho { kind, id: p, seq },
            other => other,
        };
    }
    g
}

/// The external port the datapath gave to the flow `f` (as sent by the container).
fn external_port(dp: &Datapath, f: &Frame) -> u16 {
    let (sport, dport) = match f.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => (sport, dport),
        L4::IcmpEcho { id, .. } => (id, 0),
        _ => panic!("not a flow"),
    };
    let key = FlowKey::new(
        bpfnat_common::addr_to_map(f.src.octets()),
        bpfnat_common::addr_to_map(f.dst.octets()),
        sport.to_be(),
        dport.to_be(),
        f.proto(),
    );
    let entry: NatEntry = dp.nat_out().unwrap().get(&key, 0).expect("mapping exists");
    u16::from_be(entry.port)
}

fn assert_frame(got: &[u8], want: &Frame, case: &str) {
    verify_checksums(got).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(
        got,
        &want.build()[..],
        "{case}: output frame differs from the expected one"
    );
}
