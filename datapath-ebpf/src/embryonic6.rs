//! Early drop for IPv6 connections opened from outside: [`crate::embryonic`]'s ring
//! (`EMBRYONIC6`, the same size), so a flood of IPv6 SYNs to a published port holds at most a
//! quarter of the IPv6 table.

use bpfnat_common::{Counter, EmbryonicSlot6, FlowKey6, IPPROTO_TCP, TCP_SEEN_ACK, TCP_SEEN_SYN};

use crate::{
    maps::{EMBRYONIC6, EMBRYONIC6_NEXT, NAT6_IN, NAT6_OUT},
    stats::count,
};

/// Record the new connection `key` (its `NAT6_IN` key, created at `created_ns`) in the ring
/// of `slots` slots, evicting the slot's previous connection if it was never answered.
#[inline(always)]
pub fn admit6(key: &FlowKey6, created_ns: u64, slots: u32) {
    if slots == 0 || slots & (slots - 1) != 0 {
        return;
    }
    let Some(next) = EMBRYONIC6_NEXT.get_ptr_mut(0) else {
        return;
    };
    // A plain increment, as in `embryonic::admit`.
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let n = unsafe {
        let n = *next;
        *next = n.wrapping_add(1);
        n
    };
    let Some(slot) = EMBRYONIC6.get_ptr_mut((n as u32) & (slots - 1)) else {
        return;
    };
    // SAFETY: as above.
    let old_created = unsafe { (*slot).created_ns };
    if old_created != 0 {
        // SAFETY: as above; the key is read in place.
        evict6_if_unanswered(unsafe { &(*slot).key }, old_created);
    }
    // SAFETY: as above.
    unsafe {
        *slot = EmbryonicSlot6 {
            key: *key,
            created_ns,
        };
    }
}

/// Remove the connection `key` if it is still the one created at `created` and has not been
/// answered (see `embryonic::evict_if_unanswered`).
#[inline(always)]
fn evict6_if_unanswered(key: &FlowKey6, created: u64) {
    let Some(inbound) = NAT6_IN.get_ptr(key) else {
        return;
    };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (in_created, client_flags, original) = unsafe {
        (
            (*inbound).entry.created_ns,
            (*inbound).entry.tcp_flags,
            key.original_key(&*inbound),
        )
    };
    if in_created != created {
        return;
    }
    let answered = match NAT6_OUT.get_ptr(original) {
        // SAFETY: as above.
        Some(out) => unsafe {
            (*out).entry.packets > 0
                && (key.proto != IPPROTO_TCP
                    || (client_flags & TCP_SEEN_ACK != 0
                        && (*out).entry.tcp_flags & TCP_SEEN_SYN != 0))
        },
        None => false,
    };
    if answered {
        return;
    }
    let _ = NAT6_OUT.remove(original);
    let _ = NAT6_IN.remove(key);
    count(Counter::EarlyDrops);
}
