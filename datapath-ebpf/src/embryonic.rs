//! Early drop of connections opened from outside that were never answered. Any remote can
//! send SYNs (or UDP datagrams) to a published port from as many forged sources as it likes,
//! and each one creates a mapping. Like nf_conntrack's `early_drop`, which evicts entries that
//! never became assured so that new connections still get in, such connections are kept in a
//! ring (`EMBRYONIC`) of a quarter of the table's size: a new one takes the oldest slot, and
//! the connection in it is evicted if it still has not been answered. A flood can then hold
//! at most a quarter of the table; the containers' own connections, and every answered
//! connection, keep the rest.

use bpfnat_common::{Counter, EmbryonicSlot, FlowKey, IPPROTO_TCP, TCP_SEEN_ACK, TCP_SEEN_SYN};

use crate::{
    maps::{EMBRYONIC, EMBRYONIC_NEXT, NAT_IN, NAT_OUT},
    stats::count,
};

/// Record the new connection `key` (its `NAT_IN` key, created at `created_ns`) in the ring of
/// `slots` slots (a power of two; 0 turns the limit off), evicting the slot's previous
/// connection if it was never answered.
#[inline(always)]
pub fn admit(key: &FlowKey, created_ns: u64, slots: u32) {
    if slots == 0 || slots & (slots - 1) != 0 {
        return;
    }
    let Some(next) = EMBRYONIC_NEXT.get_ptr_mut(0) else {
        return;
    };
    // A plain increment: the BPF target this is built for has no fetching atomic add. Two
    // CPUs admitting at the same instant may take the same slot, and one connection is then
    // in no slot: it only escapes the limit until its own timeout (SYN_RECV: 60 s).
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let n = unsafe {
        let n = *next;
        *next = n.wrapping_add(1);
        n
    };
    let Some(slot) = EMBRYONIC.get_ptr_mut((n as u32) & (slots - 1)) else {
        return;
    };
    // SAFETY: as above.
    let (old_key, old_created) = unsafe { ((*slot).key, (*slot).created_ns) };
    if old_created != 0 {
        evict_if_unanswered(&old_key, old_created);
    }
    // SAFETY: as above.
    unsafe {
        *slot = EmbryonicSlot {
            key: *key,
            created_ns,
        };
    }
}

/// Remove the connection `key` (a `NAT_IN` key) if it is still the one created at `created`
/// and has not been answered: the container never sent anything back, or (TCP) the client
/// never acknowledged the container's SYN-ACK (a SYN flood from forged sources).
#[inline(always)]
fn evict_if_unanswered(key: &FlowKey, created: u64) {
    let Some(inbound) = NAT_IN.get_ptr(key) else {
        return; // expired or removed meanwhile
    };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (in_created, client_flags, original) = unsafe {
        (
            (*inbound).created_ns,
            (*inbound).tcp_flags,
            key.original_key(&*inbound),
        )
    };
    if in_created != created {
        return; // a later connection of the same tuple, with its own slot
    }
    let answered = match NAT_OUT.get_ptr(original) {
        // SAFETY: as above.
        Some(out) => unsafe {
            (*out).packets > 0
                && (key.proto != IPPROTO_TCP
                    || (client_flags & TCP_SEEN_ACK != 0 && (*out).tcp_flags & TCP_SEEN_SYN != 0))
        },
        None => false,
    };
    if answered {
        return;
    }
    // Original half first, then the reply half, as everywhere else.
    let _ = NAT_OUT.remove(original);
    let _ = NAT_IN.remove(key);
    count(Counter::EarlyDrops);
}
