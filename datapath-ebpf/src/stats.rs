//! Counters. Every verdict goes through [`count`], so `bpfnat stats` explains every packet.

use bpfnat_common::Counter;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, a plain add is race-free.
        unsafe { *slot += 1 };
    }
}
