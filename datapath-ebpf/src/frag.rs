//! Fragments: the first fragment of a datagram carries the ports and is translated like any
//! packet; it records where the datagram goes, so the later fragments (no ports) follow it.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use bpfnat_common::{FragEntry, FragEntry6, FragKey, FragKey6, FRAG_TIMEOUT_NS};

use crate::maps::{FRAGS, FRAGS6};

pub const OUTBOUND: u8 = 0;
pub const INBOUND: u8 = 1;

#[inline(always)]
pub fn key(src_addr: u32, dst_addr: u32, id: u16, proto: u8, direction: u8) -> FragKey {
    FragKey {
        src_addr,
        dst_addr,
        id,
        proto,
        direction,
    }
}

/// Remember that the datagram `key` gets address `addr`. A failure only costs the datagram's
/// later fragments, which are then dropped and counted.
#[inline(always)]
pub fn remember(key: &FragKey, addr: u32) {
    let entry = FragEntry {
        // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
        created_ns: unsafe { bpf_ktime_get_ns() },
        addr,
        pad: 0,
    };
    let _ = FRAGS.insert(key, entry, BPF_ANY as u64);
}

/// The address the datagram's later fragments get, if its first fragment was seen less than
/// [`FRAG_TIMEOUT_NS`] ago (the entries are not removed: an LRU map forgets them in time).
#[inline(always)]
pub fn lookup(key: &FragKey) -> Option<u32> {
    let entry = FRAGS.get_ptr(key)?;
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (created_ns, addr) = unsafe { ((*entry).created_ns, (*entry).addr) };
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    (now.wrapping_sub(created_ns) <= FRAG_TIMEOUT_NS).then_some(addr)
}

/// [`remember`] for an IPv6 datagram.
#[inline(always)]
pub fn remember6(key: &FragKey6, addr: [u32; 4]) {
    let entry = FragEntry6 {
        // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
        created_ns: unsafe { bpf_ktime_get_ns() },
        addr,
    };
    let _ = FRAGS6.insert(key, entry, BPF_ANY as u64);
}

/// [`lookup`] for an IPv6 datagram.
#[inline(always)]
pub fn lookup6(key: &FragKey6) -> Option<[u32; 4]> {
    let entry = FRAGS6.get_ptr(key)?;
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (created_ns, addr) = unsafe { ((*entry).created_ns, (*entry).addr) };
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    (now.wrapping_sub(created_ns) <= FRAG_TIMEOUT_NS).then_some(addr)
}
