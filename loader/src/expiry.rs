//! Expiry of idle mappings. Userspace owns expiry (not LRU, not bpf_timer): one sweeper that
//! always removes both halves of a mapping together, so no half can outlive the other, and
//! that can count what it removes. The datapath only stamps `last_seen_ns`.

use std::time::Duration;

use bpfnat_common::{
    tcp_state, NatEntry, TcpState, Timeouts, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    NAT_FLAG_PUBLISHED,
};

use crate::datapath::Datapath;

/// The TCP state of a mapping from its `NAT_OUT` half and its `NAT_IN` half (if any). The
/// state is derived from the initiator's and the responder's flags: the `NAT_OUT` half
/// initiates a masqueraded flow, the `NAT_IN` half a connection to a published port.
pub fn tcp_state_of(out: &NatEntry, inbound: Option<&NatEntry>) -> TcpState {
    let in_flags = inbound.map_or(0, |r| r.tcp_flags);
    if out.flags & NAT_FLAG_PUBLISHED != 0 {
        tcp_state(in_flags, out.tcp_flags)
    } else {
        tcp_state(out.tcp_flags, in_flags)
    }
}

/// How long a mapping may stay idle, from its protocol and (TCP) the state both halves show.
pub fn idle_timeout(
    timeouts: &Timeouts,
    proto: u8,
    out: &NatEntry,
    reply: Option<&NatEntry>,
) -> Duration {
    // Traffic both ways: each half has carried a packet (the half a mapping is created for
    // is counted at once; the other only when the answer comes).
    let both_ways = out.packets > 0 && reply.is_some_and(|r| r.packets > 0);
    let secs = match proto {
        IPPROTO_TCP => timeouts.tcp(tcp_state_of(out, reply)),
        IPPROTO_UDP if both_ways => timeouts.udp_both_ways,
        IPPROTO_UDP => timeouts.udp_one_way,
        IPPROTO_ICMP => timeouts.icmp,
        _ => timeouts.generic,
    };
    Duration::from_secs(u64::from(secs))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    (ts.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec() as u64)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Mappings removed because they were idle past their timeout.
    pub expired: u64,
    /// Reply entries removed because their original half was gone.
    pub orphans: u64,
}

/// Remove every mapping idle past its timeout, and reply halves whose original half is gone
/// (left by a failed insert); `orphan_grace` keeps a half that is being created right now.
pub fn sweep(
    dp: &mut Datapath,
    timeouts: &Timeouts,
    orphan_grace: Duration,
) -> anyhow::Result<SweepReport> {
    let now = monotonic_ns();
    let mut report = SweepReport::default();

    let mut expired = Vec::new();
    {
        let out = dp.nat_out()?;
        let inbound = dp.nat_in()?;
        for item in out.iter() {
            let Ok((key, entry)) = item else { continue };
            let reply = key.reply_key(&entry);
            let reply_entry = inbound.get(&reply, 0).ok();
            let last = reply_entry.map_or(entry.last_seen_ns, |r| {
                r.last_seen_ns.max(entry.last_seen_ns)
            });
            let timeout =
                idle_timeout(timeouts, key.proto, &entry, reply_entry.as_ref()).as_nanos() as u64;
            if now.saturating_sub(last) > timeout {
                expired.push((key, reply));
            }
        }
    }
    {
        let mut out = dp.nat_out_mut()?;
        for (key, _) in &expired {
            let _ = out.remove(key);
        }
    }
    {
        let mut inbound = dp.nat_in_mut()?;
        for (_, reply) in &expired {
            let _ = inbound.remove(reply);
        }
    }
    report.expired = expired.len() as u64;

    let mut orphans = Vec::new();
    {
        let out = dp.nat_out()?;
        let inbound = dp.nat_in()?;
        let grace = orphan_grace.as_nanos() as u64;
        for item in inbound.iter() {
            let Ok((key, entry)) = item else { continue };
            if out.get(&key.original_key(&entry), 0).is_err()
                && now.saturating_sub(entry.last_seen_ns) > grace
            {
                orphans.push(key);
            }
        }
    }
    {
        let mut inbound = dp.nat_in_mut()?;
        for key in &orphans {
            let _ = inbound.remove(key);
        }
    }
    report.orphans = orphans.len() as u64;
    Ok(report)
}
