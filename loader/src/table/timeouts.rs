//! How long a mapping may stay idle: its TCP state, from the flags both halves have seen, and
//! the timeout that state (or the protocol) gets. The clock the datapath stamps entries with.

use std::time::Duration;

use bpfnat_common::{
    tcp_state, NatEntry, TcpState, Timeouts, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    NAT_FLAG_PUBLISHED,
};

/// The TCP state of a mapping from its `NAT_OUT` half and its `NAT_IN` half (if any). The
/// state is derived from the initiator's and the responder's flags: the `NAT_OUT` half
/// initiates a masqueraded flow, the `NAT_IN` half a connection to a published port.
pub(crate) fn tcp_state_of(out: &NatEntry, inbound: Option<&NatEntry>) -> TcpState {
    let in_flags = inbound.map_or(0, |r| r.tcp_flags);
    if out.flags & NAT_FLAG_PUBLISHED != 0 {
        tcp_state(in_flags, out.tcp_flags)
    } else {
        tcp_state(out.tcp_flags, in_flags)
    }
}

/// How long a mapping may stay idle, from its protocol and (TCP) the state both halves show.
pub(crate) fn idle_timeout(
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

/// The shortest idle timeout a mapping of `proto` can have, whatever its state: a mapping
/// whose original half was seen more recently than this is alive, and the sweeper need not
/// look at its reply half (one syscall per mapping saved on a busy table).
pub(crate) fn shortest_timeout(timeouts: &Timeouts, proto: u8) -> Duration {
    let t = timeouts;
    let secs = match proto {
        IPPROTO_TCP => [
            t.tcp_syn_sent,
            t.tcp_syn_recv,
            t.tcp_established,
            t.tcp_fin_wait,
            t.tcp_close_wait,
            t.tcp_last_ack,
            t.tcp_time_wait,
            t.tcp_close,
        ]
        .into_iter()
        .min()
        .unwrap_or(0),
        IPPROTO_UDP => t.udp_one_way.min(t.udp_both_ways),
        IPPROTO_ICMP => t.icmp,
        _ => t.generic,
    };
    Duration::from_secs(u64::from(secs))
}
