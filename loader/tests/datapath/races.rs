//! A flow meeting a flush between the removals of its two halves.

use super::*;

/// A flow whose original half was removed while its reply half stayed (a flush or delete
/// caught between its two removals) takes its own reply half back and keeps its port: with
/// another port the peer would see a different connection and reset it.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn orphaned_reply_half_is_taken_back() {
    let _slot = require_root();
    let mut dp = datapath(None);
    let f = Frame::new(
        NS1,
        REMOTE,
        L4::Tcp {
            sport: 40500,
            dport: 80,
            flags: ACK,
        },
    );
    assert_eq!(egress(&mut dp, &f).0, TCX_NEXT);
    let keys: Vec<FlowKey> = dp.nat_out().unwrap().keys().map(Result::unwrap).collect();
    dp.nat_out_mut().unwrap().remove(&keys[0]).unwrap();
    let (v, got) = egress(&mut dp, &f);
    assert_eq!(v, TCX_NEXT);
    assert_frame(
        &got,
        &with_src(&f, EXTERNAL, None),
        "same external port as before",
    );
    assert_eq!(dp.counter(Counter::PortRetries).unwrap(), 0);
    assert_eq!(dp.nat_in().unwrap().keys().count(), 1);
}

/// The same window seen from the flush: the reply half is read, the flow's next packet takes
/// it back, then the flush deletes it. Removing reply halves must notice the original half
/// pointing at it again and put it back, or the flow's replies stop being translated (found
/// by e2e_scale's flush under a running upload: the table ended with NAT_OUT 1, NAT_IN 0).
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn reply_half_taken_back_during_a_flush_survives_it() {
    let _slot = require_root();
    let mut dp = datapath(None);
    let f = Frame::new(
        NS1,
        REMOTE,
        L4::Tcp {
            sport: 40600,
            dport: 80,
            flags: ACK,
        },
    );
    assert_eq!(egress(&mut dp, &f).0, TCX_NEXT);
    let reply_halves: Vec<(FlowKey, NatEntry)> =
        dp.nat_in().unwrap().iter().map(Result::unwrap).collect();
    assert_eq!(reply_halves.len(), 1);
    // The flush's first deletion, then a packet of the flow in the window.
    let original: Vec<FlowKey> = dp.nat_out().unwrap().keys().map(Result::unwrap).collect();
    dp.nat_out_mut().unwrap().remove(&original[0]).unwrap();
    assert_eq!(egress(&mut dp, &f).0, TCX_NEXT);
    assert_eq!(dp.counter(Counter::PortRetries).unwrap(), 0);
    // The flush's second deletion, with what it read before.
    let kept_deleted = {
        let mut tables = dp.tables().unwrap();
        bpfnat::table::conntrack::remove_reply_halves(&mut tables, &reply_halves)
    };
    assert_eq!(kept_deleted, 0, "the taken-back reply half is put back");
    assert_eq!(dp.nat_in().unwrap().keys().count(), 1);
    let reply = Frame::new(
        REMOTE,
        EXTERNAL,
        L4::Tcp {
            sport: 80,
            dport: 40600,
            flags: ACK,
        },
    );
    let (v, got) = ingress(&mut dp, &reply);
    assert_eq!(v, TCX_NEXT);
    assert_frame(
        &got,
        &with_dst(&reply, NS1, None),
        "the reply still reaches the flow",
    );

    // A reply half nobody took back stays deleted.
    let reply_halves: Vec<(FlowKey, NatEntry)> =
        dp.nat_in().unwrap().iter().map(Result::unwrap).collect();
    dp.nat_out_mut().unwrap().remove(&original[0]).unwrap();
    let kept_deleted = {
        let mut tables = dp.tables().unwrap();
        bpfnat::table::conntrack::remove_reply_halves(&mut tables, &reply_halves)
    };
    assert_eq!(kept_deleted, 1);
    assert_eq!(dp.nat_in().unwrap().keys().count(), 0);
}

/// Item 8 of issue 13: a mapping whose reply half is gone (the race that left one behind is
/// fixed, but a mapping in that state would translate its flow one way only, forever) gets
/// its reply half back from the sweeper's orphan pass, even while the flow is busy; the
/// replies are then translated again.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn item8_sweeper_gives_a_lost_reply_half_back() {
    let _slot = require_root();
    let mut dp = datapath(None);
    let f = Frame::new(
        NS1,
        REMOTE,
        L4::Udp {
            sport: 40800,
            dport: 53,
        },
    );
    assert_eq!(egress(&mut dp, &f).0, TCX_NEXT);
    let reply_keys: Vec<FlowKey> = dp.nat_in().unwrap().keys().map(Result::unwrap).collect();
    dp.nat_in_mut().unwrap().remove(&reply_keys[0]).unwrap();
    let answer = Frame::new(
        REMOTE,
        EXTERNAL,
        L4::Udp {
            sport: 53,
            dport: 40800,
        },
    );
    let (_, got) = ingress(&mut dp, &answer);
    assert_eq!(got, answer.build(), "no reply half: not translated");
    let report = bpfnat::table::expiry::Sweeper::default()
        .step(
            &mut dp.tables().unwrap(),
            &bpfnat_common::Timeouts::KERNEL,
            std::time::Duration::from_secs(1),
            1_000,
        )
        .unwrap();
    assert_eq!(report.repaired, 1);
    let (_, got) = ingress(&mut dp, &answer);
    assert_frame(&got, &with_dst(&answer, NS1, None), "translated again");
}
