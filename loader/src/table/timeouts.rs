//! How long a mapping may stay idle: its TCP state, from the flags both halves have seen, and
//! the timeout that state (or the protocol) gets. The clock the datapath stamps entries with.

use std::time::Duration;

use bpfnat_common::{
    tcp_state,
    wire::{TCP_FIN, TCP_RST},
    NatEntry, TcpState, Timeouts, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
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
        IPPROTO_TCP => {
            let by_state = timeouts.tcp(tcp_state_of(out, reply));
            if unanswered(out, reply) {
                // Picked up mid-stream and never answered: whatever the flags say, nobody
                // is talking to it (nf_conntrack's unacknowledged timeout).
                by_state.min(timeouts.tcp_unacknowledged)
            } else {
                by_state
            }
        }
        IPPROTO_UDP if both_ways => timeouts.udp_both_ways,
        IPPROTO_UDP => timeouts.udp_one_way,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => timeouts.icmp,
        _ => timeouts.generic,
    };
    Duration::from_secs(u64::from(secs))
}

/// How long a hairpin connection (either family) may stay idle, from the TCP flags its two
/// directions recorded (`fa`, and `fb`: 0 for a direction that is gone): closed TCP
/// connections go soon, like a mapping's (RST: CLOSE; FIN both ways: TIME_WAIT; one way:
/// FIN_WAIT); an open one gets ESTABLISHED's; UDP its both-ways timeout.
pub(crate) fn hairpin_timeout(timeouts: &Timeouts, proto: u8, fa: u8, fb: u8) -> Duration {
    let secs = match proto {
        IPPROTO_TCP if (fa | fb) & TCP_RST != 0 => timeouts.tcp_close,
        IPPROTO_TCP if fa & fb & TCP_FIN != 0 => timeouts.tcp_time_wait,
        IPPROTO_TCP if (fa | fb) & TCP_FIN != 0 => timeouts.tcp_fin_wait,
        IPPROTO_TCP => timeouts.tcp_established,
        IPPROTO_UDP => timeouts.udp_both_ways,
        _ => timeouts.generic,
    };
    Duration::from_secs(u64::from(secs))
}

/// Since when a mapping counts as idle: its halves' last packet; but an attempt nobody
/// answered (SYN_SENT) counts from its first SYN, when the mapping was created or reopened:
/// retransmitted SYNs do not keep it alive.
pub(crate) fn idle_since(proto: u8, out: &NatEntry, reply: Option<&NatEntry>) -> u64 {
    if proto == IPPROTO_TCP && tcp_state_of(out, reply) == TcpState::SynSent {
        return reply.map_or(out.created_ns, |r| r.created_ns.max(out.created_ns));
    }
    reply.map_or(out.last_seen_ns, |r| r.last_seen_ns.max(out.last_seen_ns))
}

/// Whether the side that did not open the mapping has never sent a packet: the `NAT_IN`
/// half of a masqueraded flow (the remote), the `NAT_OUT` half of a published connection
/// (the container).
fn unanswered(out: &NatEntry, reply: Option<&NatEntry>) -> bool {
    if out.flags & NAT_FLAG_PUBLISHED != 0 {
        out.packets == 0
    } else {
        reply.is_none_or(|r| r.packets == 0)
    }
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
            t.tcp_unacknowledged,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn half(tcp_flags: u8, packets: u64, flags: u8) -> NatEntry {
        NatEntry {
            tcp_flags,
            packets,
            flags,
            ..NatEntry::default()
        }
    }

    /// A TCP mapping whose other side never answered (a mid-stream pickup, a forged
    /// segment) keeps at most the unacknowledged timeout, whatever its flags say; once the
    /// other side has sent anything, its state's timeout applies.
    #[test]
    fn unanswered_tcp_mappings_are_capped_at_the_unacknowledged_timeout() {
        let t = Timeouts::KERNEL;
        let secs = |out: &NatEntry, reply: Option<&NatEntry>| {
            idle_timeout(&t, IPPROTO_TCP, out, reply).as_secs()
        };
        let ack = bpfnat_common::TCP_SEEN_ACK;
        // Masqueraded, picked up mid-stream: the remote never answered.
        let out = half(ack, 1, 0);
        assert_eq!(secs(&out, None), 300);
        assert_eq!(secs(&out, Some(&half(0, 0, 0))), 300);
        assert_eq!(secs(&out, Some(&half(ack, 1, 0))), 432_000);
        // Published: the container (the NAT_OUT half) never answered.
        let published = bpfnat_common::NAT_FLAG_PUBLISHED;
        assert_eq!(
            secs(&half(0, 0, published), Some(&half(ack, 3, published))),
            300
        );
        assert_eq!(
            secs(&half(ack, 2, published), Some(&half(ack, 3, published))),
            432_000
        );
        // Shorter state timeouts stay shorter.
        let syn = bpfnat_common::TCP_SEEN_SYN;
        assert_eq!(secs(&half(syn, 1, 0), None), 120);
        assert_eq!(shortest_timeout(&t, IPPROTO_TCP).as_secs(), 10);
    }

    /// A connection attempt nobody answered is idle since its first SYN, however many times
    /// the SYN was sent again; any other mapping since its last packet.
    #[test]
    fn syn_retransmits_do_not_keep_an_attempt_alive() {
        let syn = bpfnat_common::TCP_SEEN_SYN;
        let attempt = NatEntry {
            tcp_flags: syn,
            packets: 5,
            created_ns: 1_000,
            last_seen_ns: 90_000,
            ..NatEntry::default()
        };
        assert_eq!(idle_since(IPPROTO_TCP, &attempt, None), 1_000);
        let answered = NatEntry {
            tcp_flags: syn | bpfnat_common::TCP_SEEN_ACK,
            packets: 1,
            created_ns: 1_000,
            last_seen_ns: 50_000,
            ..NatEntry::default()
        };
        assert_eq!(idle_since(IPPROTO_TCP, &attempt, Some(&answered)), 90_000);
        assert_eq!(idle_since(IPPROTO_UDP, &attempt, None), 90_000);
    }
}
