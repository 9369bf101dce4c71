//! The port search over a small range, a full table, and the sweeper on a big one.

use super::*;

/// A 100-port range serves exactly 100 flows to one destination: the search walks the whole
/// range, so the last free port is always found, and the 101st flow is dropped and counted.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn small_range_is_searched_exhaustively() {
    let _slot = require_root();
    let mut dp = datapath(Some("20000-20099".parse().unwrap()));
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..100u16 {
        let f = Frame::new(
            NS1,
            REMOTE,
            L4::Tcp {
                sport: 30000 + i,
                dport: 80,
                flags: SYN,
            },
        );
        assert_eq!(egress(&mut dp, &f).0, TCX_NEXT, "flow {i}");
        ports.insert(external_port(&dp, &f));
    }
    assert_eq!(ports.len(), 100);
    assert!(ports.iter().all(|p| (20000..=20099).contains(p)));
    let f = Frame::new(
        NS1,
        REMOTE,
        L4::Tcp {
            sport: 31000,
            dport: 80,
            flags: SYN,
        },
    );
    assert_eq!(egress(&mut dp, &f).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DropNoPort).unwrap(), 1);
}

/// A full table drops new flows (counted) and never disturbs existing ones.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn full_table_drops_new_flows_only() {
    let _slot = require_root();
    let mut dp = Datapath::load(LoadOptions { table_size: 2 }).expect("load");
    dp.configure(
        EXTERNAL.parse().unwrap(),
        None,
        &bpfnat_common::Timeouts::KERNEL,
    )
    .unwrap();
    dp.add_internal_subnet("172.18.0.0/24".parse().unwrap())
        .unwrap();
    let flows: Vec<Frame> = (0..3u16)
        .map(|i| {
            Frame::new(
                NS1,
                REMOTE,
                L4::Udp {
                    sport: 42000 + i,
                    dport: 53,
                },
            )
        })
        .collect();
    assert_eq!(egress(&mut dp, &flows[0]).0, TCX_NEXT);
    assert_eq!(egress(&mut dp, &flows[1]).0, TCX_NEXT);
    assert_eq!(
        egress(&mut dp, &flows[2]).0,
        TC_ACT_SHOT,
        "third flow with room for two"
    );
    assert_eq!(dp.counter(Counter::DropTableFull).unwrap(), 1);
    for f in &flows[..2] {
        let (v, got) = egress(&mut dp, f);
        assert_eq!(v, TCX_NEXT);
        assert_frame(&got, &with_src(f, EXTERNAL, None), "existing flow");
    }
    assert_eq!(
        dp.nat_in().unwrap().keys().count(),
        2,
        "no half-mapping left by the failed flow"
    );
}

/// The sweeper works through a big table a slice at a time, resuming where it stopped, and
/// removes every idle mapping (both halves) and every orphaned reply half by the end of a
/// pass, while a live mapping stays.
#[test]
#[ignore = "needs root: `cargo xtask test` runs it"]
fn sweeper_walks_a_big_table_in_slices() {
    let _slot = require_root();
    use bpfnat::table::expiry::Sweeper;
    let mut dp = Datapath::load(LoadOptions { table_size: 65_536 }).expect("load");
    dp.configure(
        EXTERNAL.parse().unwrap(),
        None,
        &bpfnat_common::Timeouts::KERNEL,
    )
    .unwrap();
    dp.add_internal_subnet("172.18.0.0/24".parse().unwrap())
        .unwrap();
    // 40,000 UDP mappings idle since boot, and 1,000 reply halves without an original half.
    let ext = bpfnat_common::addr_to_map([203, 0, 113, 2]);
    {
        let idle = NatEntry::default();
        for i in 0..40_000u32 {
            let original = FlowKey::new(
                bpfnat_common::addr_to_map([172, 18, 0, 2]),
                0x0a00_0000 + i,
                1000,
                53u16.to_be(),
                17,
            );
            let out = NatEntry {
                addr: ext,
                port: 1000,
                ..idle
            };
            dp.nat_out_mut().unwrap().insert(original, out, 0).unwrap();
            let back = NatEntry {
                addr: original.src_addr,
                port: 1000,
                ..idle
            };
            dp.nat_in_mut()
                .unwrap()
                .insert(original.reply_key(&out), back, 0)
                .unwrap();
        }
        for i in 0..1_000u32 {
            let orphan = FlowKey::new(0x0b00_0000 + i, ext, 53u16.to_be(), 2000, 17);
            dp.nat_in_mut().unwrap().insert(orphan, idle, 0).unwrap();
        }
    }
    // And one live flow.
    let live = Frame::new(
        NS1,
        REMOTE,
        L4::Udp {
            sport: 44000,
            dport: 53,
        },
    );
    egress(&mut dp, &live);

    let mut sweeper = Sweeper::default();
    let mut steps = 0;
    let mut expired = 0;
    let mut orphans = 0;
    loop {
        let r = sweeper
            .step(
                &mut dp.tables().unwrap(),
                &bpfnat_common::Timeouts::KERNEL,
                std::time::Duration::from_secs(1),
                5_000,
            )
            .unwrap();
        expired += r.expired;
        orphans += r.orphans;
        steps += 1;
        if !sweeper.mid_pass() || steps > 40 {
            break;
        }
    }
    assert_eq!(expired, 40_000, "every idle mapping, in {steps} steps");
    assert_eq!(orphans, 1_000);
    assert!(
        (8..=12).contains(&steps),
        "about 41,001 / 5,000 slices, got {steps}"
    );
    assert_eq!(
        dp.nat_out().unwrap().keys().count(),
        1,
        "the live flow stays"
    );
    assert_eq!(dp.nat_in().unwrap().keys().count(), 1);
}
