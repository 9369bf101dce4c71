//! IPv6 source NAT (NAT66 masquerade) mappings: [`crate::nat`]'s scheme with 128-bit
//! addresses. A mapping is `NAT6_OUT[original tuple]` and `NAT6_IN[reply tuple]`; the reply
//! half is claimed first with `BPF_NOEXIST`, so two CPUs never hand out the same external
//! port for one destination; the original port is kept when its reply tuple is free and the
//! host uses no socket there, else a port of the same class is searched from a random offset
//! (`bpf_loop`), as for IPv4. The per-half state (times, accounting, TCP tracking) is the
//! IPv4 [`NatEntry`] inside each [`NatEntry6`], so the same code follows it.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_loop},
    programs::TcContext,
};
use bpfnat_common::{
    Counter, FlowKey6, NatEntry, NatEntry6, PublishKey6, PublishTarget6, NAT_FLAG_ORIGINAL,
    NAT_FLAG_PORT_REMAPPED, NAT_FLAG_PUBLISHED, PORT_ALLOC_TRIES,
};

use crate::{
    embryonic6, fwd, host,
    maps::{CONFIG, NAT6_IN, NAT6_OUT, PUBLISH6, SEARCH6},
    nat::port_range,
    stats::count,
};

const EEXIST: i32 = 17;

/// What the IPv6 path needs of the configuration.
#[derive(Clone, Copy)]
pub struct Settings6 {
    pub external: [u32; 4],
    pub port_min: u16,
    pub port_max: u16,
    pub embryonic_slots: u32,
}

/// The settings, if the datapath has been told an external IPv6 address.
#[inline(always)]
pub fn settings6() -> Option<Settings6> {
    let cfg = CONFIG.get(0)?;
    let a = cfg.external_addr6;
    if a[0] | a[1] | a[2] | a[3] == 0 {
        return None;
    }
    Some(Settings6 {
        external: a,
        port_min: cfg.port_min,
        port_max: cfg.port_max,
        embryonic_slots: cfg.embryonic_slots,
    })
}

/// Try to reserve `reply` for this mapping. `Ok(false)`: another mapping holds it.
#[inline(always)]
fn claim6(reply: &FlowKey6, inbound: &NatEntry6) -> Result<bool, Counter> {
    match NAT6_IN.insert(reply, inbound, BPF_NOEXIST as u64) {
        Ok(()) => Ok(true),
        Err(e) if e == -EEXIST => Ok(false),
        Err(_) => Err(Counter::DropTableFull),
    }
}

const SEARCH_EXHAUSTED: i32 = 0;
const SEARCH_CLAIMED: i32 = 1;
const SEARCH_TABLE_FULL: i32 = 2;

/// State of one port search. It lives in a per-CPU scratch slot (`SEARCH6`), not on the
/// stack, which the IPv6 program's 128-bit keys and addresses already fill; the `bpf_loop`
/// callback finds it there.
#[repr(C)]
pub struct PortSearch6 {
    reply: FlowKey6,
    inbound: NatEntry6,
    lo: u32,
    span: u32,
    start: u32,
    outcome: i32,
}

/// One step of the port search: try port number `index` after the random start.
#[inline(never)]
extern "C" fn try_next_port6(index: u32, _ctx: *mut c_void) -> i64 {
    let Some(search) = SEARCH6.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot, from a successful lookup; nothing else uses it while
    // this program runs.
    let search = unsafe { &mut *search };
    let span = search.span;
    if span == 0 {
        return 1;
    }
    let port = search.lo + (search.start.wrapping_add(index)) % span;
    count(Counter::PortRetries);
    search.reply.dst_port = (port as u16).to_be();
    match claim6(&search.reply, &search.inbound) {
        Ok(true) => {
            search.outcome = SEARCH_CLAIMED;
            1
        }
        Ok(false) => 0,
        Err(_) => {
            search.outcome = SEARCH_TABLE_FULL;
            1
        }
    }
}

/// Claim a free port of the search's range for its reply tuple (see `nat::search_port`).
/// `slot` is a raw pointer, never a `&mut`, while the callback runs: the callback writes the
/// slot through its own pointer, and a `&mut` would let the compiler assume nothing else
/// does (and keep the outcome it wrote before the loop).
#[inline(always)]
fn search_port6(slot: *mut PortSearch6) -> Result<bool, Counter> {
    // SAFETY: `slot` is this CPU's scratch slot, from a successful lookup, valid for the whole
    // program run; fields are read and written through it one at a time.
    let span = unsafe { (*slot).span };
    if span == 0 {
        return Ok(false);
    }
    let tries = if span < PORT_ALLOC_TRIES {
        span
    } else {
        PORT_ALLOC_TRIES
    };
    // SAFETY: bpf_get_prandom_u32 takes no arguments and has no preconditions; `slot` as
    // above.
    unsafe {
        (*slot).start = bpf_get_prandom_u32() % span;
        (*slot).outcome = SEARCH_EXHAUSTED;
    }
    // The callback finds the search in its scratch slot; bpf_loop wants some stack context.
    let mut unused = 0u64;
    // SAFETY: the callback has the signature bpf_loop expects, and `unused` outlives the call.
    unsafe {
        bpf_loop(
            tries,
            try_next_port6 as *mut c_void,
            &raw mut unused as *mut c_void,
            0,
        );
    }
    // SAFETY: as above; read after the callback's writes (volatile: written behind an
    // opaque helper call).
    match unsafe { core::ptr::read_volatile(&raw const (*slot).outcome) } {
        SEARCH_CLAIMED => Ok(true),
        SEARCH_TABLE_FULL => Err(Counter::DropTableFull),
        _ => Ok(false),
    }
}

/// Whether the host itself uses the external side of `reply` (see `nat::host_uses`).
#[inline(always)]
fn host_uses6(ctx: &TcContext, reply: &FlowKey6) -> bool {
    let used = host::has_socket6(
        ctx,
        reply.proto,
        reply.src_addr,
        reply.dst_addr,
        reply.src_port,
        reply.dst_port,
    );
    if used {
        count(Counter::PortHostOwned);
    }
    used
}

/// Port searches per new flow (see `nat::SEARCHES`).
const SEARCHES: u32 = 3;

/// Create the mapping for the new outbound IPv6 flow `key`; returns its `NAT6_OUT` entry.
#[inline(always)]
pub fn create_mapping6(
    ctx: &TcContext,
    key: &FlowKey6,
    cfg: &Settings6,
) -> Result<*mut NatEntry6, Counter> {
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let original_port = u16::from_be(key.src_port);
    let (lo, hi) = port_range(key.proto, original_port, cfg.port_min, cfg.port_max);
    let slot = SEARCH6.get_ptr_mut(0).ok_or(Counter::DropTableFull)?;
    // SAFETY: this CPU's scratch slot, from a successful lookup; nothing else uses it while
    // this program runs. No `&mut` to it lives across the search (see `search_port6`).
    unsafe {
        *slot = PortSearch6 {
            reply: FlowKey6::new(
                key.dst_addr,
                cfg.external,
                key.dst_port,
                key.src_port,
                key.proto,
            ),
            inbound: NatEntry6 {
                entry: NatEntry {
                    last_seen_ns: now,
                    created_ns: now,
                    port: key.src_port,
                    ..NatEntry::default()
                },
                addr: key.src_addr,
            },
            lo,
            span: if hi < lo {
                0
            } else {
                hi.wrapping_sub(lo).wrapping_add(1)
            },
            start: 0,
            outcome: SEARCH_EXHAUSTED,
        };
    }
    let in_range = (original_port as u32) >= lo && (original_port as u32) <= hi;
    // Shared references into the slot, each taken only while no search runs.
    let reply = |slot: *mut PortSearch6| -> &'static FlowKey6 {
        // SAFETY: `slot` is this CPU's scratch slot, valid for the whole program run.
        unsafe { &(*slot).reply }
    };
    // SAFETY: as above.
    let inbound = unsafe { &(*slot).inbound };
    let mut claimed =
        in_range && !host_uses6(ctx, reply(slot)) && keep_own_port6(reply(slot), inbound, key)?;
    let mut searches = 0;
    while !claimed && searches < SEARCHES {
        searches += 1;
        if !search_port6(slot)? {
            break;
        }
        if host_uses6(ctx, reply(slot)) {
            let _ = NAT6_IN.remove(reply(slot));
            continue;
        }
        claimed = true;
    }
    // SAFETY: as above; the search is over.
    let search = unsafe { &mut *slot };
    if !claimed {
        return Err(Counter::DropNoPort);
    }
    let reply = search.reply;
    let mut flags = NAT_FLAG_ORIGINAL;
    if reply.dst_port != key.src_port {
        flags |= NAT_FLAG_PORT_REMAPPED;
    }
    // The original half, written over the search's copy of the reply half.
    let outbound = &mut search.inbound;
    outbound.addr = cfg.external;
    outbound.entry.port = reply.dst_port;
    outbound.entry.flags = flags;
    match NAT6_OUT.insert(key, *outbound, BPF_NOEXIST as u64) {
        Ok(()) => count(Counter::NewMappings),
        Err(e) if e == -EEXIST => {
            // Another CPU mapped this flow an instant earlier: give our port back unless its
            // mapping uses the same one (see `nat::create_mapping`).
            let winner_port = NAT6_OUT.get_ptr(key).map(|w| {
                // SAFETY: a pointer from a successful map lookup is non-null, aligned and
                // valid for the whole program run.
                unsafe { (*w).entry.port }
            });
            if winner_port != Some(reply.dst_port) {
                let _ = NAT6_IN.remove(reply);
            }
        }
        Err(_) => {
            let _ = NAT6_IN.remove(reply);
            return Err(Counter::DropTableFull);
        }
    }
    NAT6_OUT.get_ptr_mut(key).ok_or(Counter::DropTableFull)
}

/// Whether the flow can keep its own port (see `nat::keep_own_port`).
#[inline(always)]
fn keep_own_port6(reply: &FlowKey6, inbound: &NatEntry6, key: &FlowKey6) -> Result<bool, Counter> {
    if claim6(reply, inbound)? {
        return Ok(true);
    }
    match NAT6_IN.get_ptr(reply) {
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
        // whole program run.
        Some(e) => Ok(unsafe { (*e).addr == key.src_addr && (*e).entry.port == key.src_port }),
        None => claim6(reply, inbound),
    }
}

/// The IPv4-shaped state inside an IPv6 half, for the code both families share.
#[inline(always)]
pub fn state(entry: *mut NatEntry6) -> *mut NatEntry {
    // SAFETY: only the field's address is taken (no read); `entry` comes from a lookup.
    unsafe { &raw mut (*entry).entry }
}

/// Where an IPv6 published port leads, unless into an internal network.
#[inline(always)]
pub fn published6(proto: u8, host_port: u16) -> Option<PublishTarget6> {
    let key = PublishKey6 {
        host_port,
        proto,
        pad: 0,
    };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let target = PUBLISH6.get_ptr(key).map(|t| unsafe { *t })?;
    match fwd::bridge_of6(target.addr) {
        Some(bridge) if fwd::is_internal_bridge(bridge) => None,
        _ => Some(target),
    }
}

/// A connection arriving for an IPv6 published port: its mapping, initiator first
/// (`NAT6_IN`, keyed by the packet as it arrives, claimed with `BPF_NOEXIST`), then the
/// container's answers (`NAT6_OUT`), as for IPv4. A subprogram of its own, for the stack.
#[inline(never)]
pub fn create_published_mapping6(
    key: &FlowKey6,
    target: &PublishTarget6,
    cfg: &Settings6,
) -> Result<(), Counter> {
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut half = NatEntry6 {
        entry: NatEntry {
            last_seen_ns: now,
            created_ns: now,
            port: target.port,
            flags: NAT_FLAG_PUBLISHED,
            ..NatEntry::default()
        },
        addr: target.addr,
    };
    match NAT6_IN.insert(key, half, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU created it an instant earlier: theirs serves.
        Err(e) if e == -EEXIST => return Ok(()),
        Err(_) => return Err(Counter::DropTableFull),
    }
    let reply = FlowKey6::new(
        target.addr,
        key.src_addr,
        target.port,
        key.src_port,
        key.proto,
    );
    half.addr = cfg.external;
    half.entry.port = key.dst_port;
    half.entry.flags = NAT_FLAG_PUBLISHED | NAT_FLAG_ORIGINAL;
    if NAT6_OUT.insert(reply, half, BPF_NOEXIST as u64).is_err() {
        let _ = NAT6_IN.remove(key);
        return Err(Counter::DropTableFull);
    }
    count(Counter::PublishedMappings);
    embryonic6::admit6(key, now, cfg.embryonic_slots);
    Ok(())
}
