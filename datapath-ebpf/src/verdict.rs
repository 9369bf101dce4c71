//! What a program returns, and the wrapper every entry point runs its logic in: a `try_*`
//! function's error becomes a counted drop, and the packet is traced when tracing is on.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use aya_log_ebpf::warn;
use bpfnat_common::{Counter, TRACE_NOT_DROPPED};

use crate::{maps::LOG_RATE, stats::count, trace};

/// The verdict for a packet that goes on its way (untouched, or translated in place): TCX's
/// `TCX_NEXT` (`TC_ACT_UNSPEC`). The programs attached after ours on the same hook (TCX) and
/// the legacy tc filters then still see it, as they would without bpfnat; `TC_ACT_OK` would be
/// a final pass that hides it from them (a monitor added after bpfnat would see nothing). With
/// no one after us it means what `TC_ACT_OK` does: on to the stack, or out of the device.
pub const NEXT: i32 = TC_ACT_UNSPEC;

/// Not a TC action: a program's logic asks its entry point to tail-call the next program
/// (which decides, and traces, the packet). A tail call must be made from the entry point's
/// own frame: the verifier refuses one from a BPF subprogram, which the logic may compile to.
pub const TAIL_CALL: i32 = -2;

/// Pass the packet on untouched, counting why.
#[inline(always)]
pub fn pass(reason: Counter) -> i32 {
    count(reason);
    NEXT
}

#[inline(always)]
fn drop_packet(ctx: &TcContext, reason: Counter) -> i32 {
    count(reason);
    if matches!(reason, Counter::DropNoPort | Counter::DropTableFull) && log_allowed() {
        // Rare, operator-relevant, and rate-limited: never a log line per packet.
        match reason {
            Counter::DropNoPort => warn!(
                ctx,
                "no free external port: packets dropped (see drop_no_port)"
            ),
            _ => warn!(
                ctx,
                "connection table full: packets dropped (see drop_table_full)"
            ),
        }
    }
    TC_ACT_SHOT
}

/// Run one program's logic, turn its error into a counted drop, and trace the packet when
/// tracing is on (the only cost when off: one read of the trace filter). Both families: the
/// tuples live in per-CPU slots, not on the stack.
#[inline(always)]
pub fn run(ctx: &TcContext, hook: u8, logic: impl Fn(&TcContext) -> Result<i32, Counter>) -> i32 {
    // Two copies of the logic, one per branch: nothing of the trace stays live across the
    // untraced one, whose stack is then the logic's own (some programs are near the limit).
    if !trace::start(ctx) {
        return match logic(ctx) {
            Ok(action) => action,
            Err(reason) => drop_packet(ctx, reason),
        };
    }
    let (action, reason) = match logic(ctx) {
        Ok(action) => (action, TRACE_NOT_DROPPED),
        Err(reason) => (drop_packet(ctx, reason), reason as u32),
    };
    if action != TAIL_CALL {
        trace::emit(ctx, hook, action, reason);
    }
    action
}

/// At most one log line per second per CPU.
#[inline(always)]
fn log_allowed() -> bool {
    let Some(last) = LOG_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `last` is this CPU's slot of a per-CPU array, from a successful lookup; no other
    // program run touches it meanwhile.
    unsafe {
        if now.wrapping_sub(*last) < 1_000_000_000 {
            return false;
        }
        *last = now;
    }
    true
}
