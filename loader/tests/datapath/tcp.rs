//! Connection tracking: TCP states, reopening, mid-stream pickup, stray segments.

use super::*;

/// The TCP state of the only mapping in the tables.
pub(crate) fn only_tcp_state(dp: &Datapath) -> bpfnat_common::TcpState {
    let out: Vec<_> = dp.nat_out().unwrap().iter().map(Result::unwrap).collect();
    let inb: Vec<_> = dp.nat_in().unwrap().iter().map(Result::unwrap).collect();
    assert_eq!((out.len(), inb.len()), (1, 1), "exactly one mapping");
    bpfnat_common::tcp_state(out[0].1.tcp_flags, inb[0].1.tcp_flags)
}

/// One segment of a conversation: `true` = container -> outside, with its flags.
pub(crate) type Step = (bool, u8, bpfnat_common::TcpState);

/// Each side of a conversation numbers its bytes as a TCP does: from its own initial
/// sequence number, acknowledging everything the other side sent (the datapath checks RSTs
/// and FINs against both).
pub(crate) struct Sides {
    pub container_next: u32,
    pub remote_next: u32,
}

impl Sides {
    fn new() -> Self {
        Self {
            container_next: 1_000,
            remote_next: 4_000_000_000,
        }
    }

    /// Number `f`, a segment from the container (`outbound`) or from the remote.
    fn number(&mut self, f: &mut Frame, outbound: bool, flags: u8) {
        let (own, other) = if outbound {
            (&mut self.container_next, self.remote_next)
        } else {
            (&mut self.remote_next, self.container_next)
        };
        f.tcp_seq = *own;
        f.tcp_ack = if flags & ACK != 0 { other } else { 0 };
        let len =
            f.payload.len() as u32 + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0);
        *own = own.wrapping_add(len);
    }
}

fn run_conversation(name: &str, steps: &[Step]) -> Datapath {
    converse(name, steps).0
}

/// Run a conversation; the datapath, and where each side's sequence numbers are.
pub(crate) fn converse(name: &str, steps: &[Step]) -> (Datapath, Sides) {
    let mut dp = datapath(None);
    let mut sides = Sides::new();
    for (i, &(outbound, flags, want)) in steps.iter().enumerate() {
        let (verdict, got) = if outbound {
            let mut f = Frame::new(
                NS1,
                REMOTE,
                L4::Tcp {
                    sport: 40100,
                    dport: 80,
                    flags,
                },
            );
            sides.number(&mut f, true, flags);
            let r = egress(&mut dp, &f);
            assert_frame(&r.1, &with_src(&f, EXTERNAL, None), name);
            r
        } else {
            let mut f = Frame::new(
                REMOTE,
                EXTERNAL,
                L4::Tcp {
                    sport: 80,
                    dport: 40100,
                    flags,
                },
            );
            sides.number(&mut f, false, flags);
            let r = ingress(&mut dp, &f);
            assert_frame(&r.1, &with_dst(&f, NS1, None), name);
            r
        };
        let _ = got;
        assert_eq!(verdict, TCX_NEXT, "{name}: step {i}");
        assert_eq!(
            only_tcp_state(&dp),
            want,
            "{name}: after step {i} ({} {flags:#04x})",
            if outbound { "out" } else { "in" }
        );
    }
    (dp, sides)
}

/// Every state transition, driven by real segments through both programs.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn tcp_state_transitions() {
    let _slot = require_root();
    use bpfnat_common::TcpState::*;
    let handshake: [Step; 3] = [
        (true, SYN, SynSent),
        (false, SYN | ACK, SynRecv),
        (true, ACK, Established),
    ];
    let cases: Vec<(&str, Vec<Step>)> = vec![
        ("handshake", handshake.to_vec()),
        (
            "container closes first",
            [
                &handshake[..],
                &[
                    (true, FIN | ACK, FinWait),
                    (false, ACK, CloseWait),
                    (false, FIN | ACK, LastAck),
                    (true, ACK, TimeWait),
                ],
            ]
            .concat(),
        ),
        (
            "remote closes first",
            [
                &handshake[..],
                &[
                    (false, FIN | ACK, FinWait),
                    (true, ACK, CloseWait),
                    (true, FIN | ACK, LastAck),
                    (false, ACK, TimeWait),
                ],
            ]
            .concat(),
        ),
        (
            "both close, second FIN acknowledging the first",
            [
                &handshake[..],
                // The remote's FIN also acknowledges ours; our ACK of its FIN completes the close.
                &[
                    (true, FIN | ACK, FinWait),
                    (false, FIN | ACK, LastAck),
                    (true, ACK, TimeWait),
                    (false, ACK, TimeWait),
                ],
            ]
            .concat(),
        ),
        (
            "reset by the remote",
            [&handshake[..], &[(false, RST, Close)]].concat(),
        ),
        (
            "reset by the container",
            [&handshake[..], &[(true, RST | ACK, Close)]].concat(),
        ),
        (
            "connection refused",
            vec![(true, SYN, SynSent), (false, RST | ACK, Close)],
        ),
        (
            "picked up mid-stream",
            vec![(true, ACK, Established), (false, ACK, Established)],
        ),
    ];
    for (name, steps) in cases {
        run_conversation(name, &steps);
    }
}

/// A new SYN on a mapping in TIME_WAIT (or CLOSE) reopens it on the same external port.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn tcp_time_wait_is_reused_by_a_new_syn() {
    let _slot = require_root();
    use bpfnat_common::TcpState::*;
    let mut dp = run_conversation(
        "to time-wait",
        &[
            (true, SYN, SynSent),
            (false, SYN | ACK, SynRecv),
            (true, ACK, Established),
            (true, FIN | ACK, FinWait),
            (false, FIN | ACK, LastAck),
            (true, ACK, TimeWait),
        ],
    );
    let syn = Frame::new(
        NS1,
        REMOTE,
        L4::Tcp {
            sport: 40100,
            dport: 80,
            flags: SYN,
        },
    );
    let (v, got) = egress(&mut dp, &syn);
    assert_eq!(v, TCX_NEXT);
    assert_frame(
        &got,
        &with_src(&syn, EXTERNAL, None),
        "reopening syn keeps the mapping",
    );
    assert_eq!(only_tcp_state(&dp), SynSent);
    assert_eq!(dp.counter(Counter::TcpReopened).unwrap(), 1);
    assert_eq!(
        dp.counter(Counter::NewMappings).unwrap(),
        1,
        "same mapping, not a new one"
    );

    // A retransmitted SYN of a live connection does not reopen anything.
    let mut dp = run_conversation("syn sent", &[(true, SYN, SynSent)]);
    egress(&mut dp, &syn);
    assert_eq!(dp.counter(Counter::TcpReopened).unwrap(), 0);
}

/// A mid-stream segment for the uplink address that matches no mapping and no socket is
/// dropped (the host would answer with a RST and kill a connection about to be picked up
/// again); SYNs and RSTs still reach the host.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn stray_tcp_segments_are_dropped_not_reset() {
    let _slot = require_root();
    let mut dp = datapath(None);
    for (flags, verdict, counter) in [
        (ACK, TC_ACT_SHOT, Counter::DropStrayTcp),
        (FIN | ACK, TC_ACT_SHOT, Counter::DropStrayTcp),
        (SYN | ACK, TCX_NEXT, Counter::PassNoMatch),
        (RST, TCX_NEXT, Counter::PassNoMatch),
    ] {
        let before = dp.counter(counter).unwrap();
        let f = Frame::new(
            REMOTE,
            EXTERNAL,
            L4::Tcp {
                sport: 80,
                dport: 33333,
                flags,
            },
        );
        let (v, _) = ingress(&mut dp, &f);
        assert_eq!(v, verdict, "flags {flags:#04x}");
        assert_eq!(
            dp.counter(counter).unwrap(),
            before + 1,
            "flags {flags:#04x}"
        );
    }
}
