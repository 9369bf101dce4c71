//! Counters. Every verdict goes through [`count`], so `bpfnat stats` explains every packet.

use bpfnat_common::Counter;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, a plain add is race-free.
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
        // whole program run (the verifier checks the lookup's result before any use).
        unsafe { *slot += 1 };
    }
}

/// Account one packet of `len` bytes to its hook and protocol.
#[inline(always)]
pub fn account(hook: u8, proto: u8, len: u32) {
    if let Some(slot) = crate::maps::TRAFFIC.get_ptr_mut(bpfnat_common::traffic_index(hook, proto))
    {
        // Per-CPU slot: plain adds are race-free.
        // SAFETY: the pointers come from the bounds-checked accessor (`parse::ptr_at`), which
        // checked that every byte lies between data and data_end; unaligned access is allowed.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += len as u64;
        }
    }
}
