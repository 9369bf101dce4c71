//! Source NAT mappings: find the mapping of a flow, or create one with a free external port.
//!
//! A mapping is two entries: `NAT_OUT[original tuple]` and `NAT_IN[reply tuple]`. The reply
//! entry is created first with `BPF_NOEXIST`, which atomically reserves the external port for
//! that destination (so one external port serves many destinations, like MASQUERADE); the
//! original entry follows, and the reply entry is rolled back if that fails.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_loop},
    programs::TcContext,
};
use bpfnat_common::{
    tcp_state,
    wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    Counter, FlowKey, NatEntry, PublishKey, PublishTarget, IPPROTO_DCCP, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, NAT_FLAG_ORIGINAL,
    NAT_FLAG_PORT_REMAPPED, NAT_FLAG_PUBLISHED, PORT_ALLOC_TRIES, TCP_SEEN_ACK,
    TCP_SEEN_ACKED_PEER_FIN, TCP_SEEN_FIN, TCP_SEEN_PEER_FIN, TCP_SEEN_RST, TCP_SEEN_SEQ,
    TCP_SEEN_SYN,
};

use crate::{
    embryonic, fwd, host,
    maps::{CONFIG, NAT_IN, NAT_OUT, PUBLISH},
    stats::count,
};

const EEXIST: i32 = 17;

/// What the packet path needs of the configuration (copied: the full `NatConfig` also holds
/// the timeouts, which only userspace reads).
#[derive(Clone, Copy)]
pub struct Settings {
    pub external_addr: u32,
    pub port_min: u16,
    pub port_max: u16,
    pub uplink_ifindex: u32,
    pub embryonic_slots: u32,
}

/// The settings, if the datapath has been told its external address.
#[inline(always)]
pub fn settings() -> Option<Settings> {
    match CONFIG.get(0) {
        Some(cfg) if cfg.external_addr != 0 => Some(Settings {
            external_addr: cfg.external_addr,
            port_min: cfg.port_min,
            port_max: cfg.port_max,
            uplink_ifindex: cfg.uplink_ifindex,
            embryonic_slots: cfg.embryonic_slots,
        }),
        _ => None,
    }
}

/// Record one packet of `len` bytes on an entry. Several CPUs may carry the same flow, so
/// the counters use atomic adds; `last_seen_ns` is a plain store (any recent value will do).
#[inline(always)]
pub fn touch(entry: *mut NatEntry, len: u32) {
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use). The atomic
    // add targets a u64 field inside that value.
    unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        // The BPF target has no compare-and-swap, so core's atomics lack fetch_add; the
        // intrinsic lowers to the BPF atomic add instruction (the result is unused, so no
        // fetch variant is needed).
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).bytes, len as u64);
    }
}

/// Whether the datapath parses ports for `proto` (else its flows are keyed by address only).
#[inline(always)]
fn has_ports(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_DCCP | IPPROTO_SCTP
    )
}

/// Ports an outbound flow may be given, inclusive, host byte order (`port_min`/`port_max`:
/// the configured range, 0 for MASQUERADE's classes).
#[inline(always)]
pub fn port_range(proto: u8, original: u16, port_min: u16, port_max: u16) -> (u32, u32) {
    if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
        // Echo identifiers have no classes; any 16-bit value is fine.
        return (0, 65535);
    }
    if proto == IPPROTO_SCTP || !has_ports(proto) {
        // SCTP keeps its ports (its CRC cannot be fixed up here); a protocol without ports
        // has the one "port" 0: one flow per peer address at a time.
        return (original as u32, original as u32);
    }
    if port_min != 0 {
        return (port_min as u32, port_max as u32);
    }
    // MASQUERADE keeps a port in its class so privileged-port semantics survive the NAT.
    match original {
        0..=511 => (1, 511),
        512..=1023 => (600, 1023),
        _ => (1024, 65535),
    }
}

/// Try to reserve `reply` for this mapping. `Ok(false)`: another mapping holds it.
#[inline(always)]
fn claim(reply: &FlowKey, inbound: &NatEntry) -> Result<bool, Counter> {
    match NAT_IN.insert(reply, inbound, BPF_NOEXIST as u64) {
        Ok(()) => Ok(true),
        Err(e) if e == -EEXIST => Ok(false),
        // -E2BIG / -ENOMEM: the table is full.
        Err(_) => Err(Counter::DropTableFull),
    }
}

const SEARCH_EXHAUSTED: i32 = 0;
const SEARCH_CLAIMED: i32 = 1;
const SEARCH_TABLE_FULL: i32 = 2;

/// State of one port search, shared with the `bpf_loop` callback through the stack.
#[repr(C)]
struct PortSearch {
    reply: FlowKey,
    inbound: NatEntry,
    lo: u32,
    span: u32,
    start: u32,
    outcome: i32,
}

/// One step of the port search: try port number `index` after the random start. Returns 1
/// to stop the loop.
#[inline(never)]
extern "C" fn try_next_port(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the `ctx` pointer given by search_port: a live, exclusive
    // &mut PortSearch on its stack.
    let search = unsafe { &mut *(ctx as *mut PortSearch) };
    let span = search.span;
    if span == 0 {
        return 1; // never: span is checked by the caller; keeps the modulo panic-free
    }
    let port = search.lo + (search.start.wrapping_add(index)) % span;
    count(Counter::PortRetries);
    search.reply.dst_port = (port as u16).to_be();
    match claim(&search.reply, &search.inbound) {
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

/// Whether the flow `key` can keep its own port, with `reply` as its reply tuple: claimed now,
/// or already held by the flow's own reply half, left alone while its original half was
/// removed (a flush or delete between the two removals, an orphan awaiting the sweeper).
/// Keeping the port matters: with another one the peer would see a different connection and
/// reset it.
#[inline(always)]
fn keep_own_port(reply: &FlowKey, inbound: &NatEntry, key: &FlowKey) -> Result<bool, Counter> {
    if claim(reply, inbound)? {
        return Ok(true);
    }
    match NAT_IN.get_ptr(reply) {
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
        // whole program run (the verifier checks the lookup's result before any use).
        Some(e) => Ok(unsafe { (*e).addr == key.src_addr && (*e).port == key.src_port }),
        // Removed since the claim failed (that same flush or the sweeper): free again.
        None => claim(reply, inbound),
    }
}

/// Whether the host itself uses the external side of `reply` (a reply tuple: the peer as
/// source, the uplink address and a candidate port as destination): a socket of the host
/// would receive the peer's packets to that port.
#[inline(always)]
fn host_uses(ctx: &TcContext, reply: &FlowKey) -> bool {
    let used = host::has_socket(
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

/// Claim a free port of `search`'s range for its reply tuple, walking the range from a random
/// offset, like MASQUERADE: sequential probing finds the last free port of a small range for
/// sure; the random start spreads flows out. bpf_loop (Linux 5.17) lets the verifier check
/// the body once instead of once per iteration, which keeps 128 tries affordable. On
/// success the claimed tuple is `search.reply`. The search state is the caller's one copy
/// of the tuple and the reply entry: the egress program's stack is close to its limit.
#[inline(always)]
fn search_port(search: &mut PortSearch) -> Result<bool, Counter> {
    let span = search.span;
    if span == 0 {
        // Unreachable with a validated configuration; also proves to the compiler that the
        // modulo below cannot divide by zero (a panic path the verifier would reject).
        return Ok(false);
    }
    let tries = if span < PORT_ALLOC_TRIES {
        span
    } else {
        PORT_ALLOC_TRIES
    };
    // SAFETY: bpf_get_prandom_u32 takes no arguments and has no preconditions.
    search.start = unsafe { bpf_get_prandom_u32() } % span;
    search.outcome = SEARCH_EXHAUSTED;
    // SAFETY: the callback has the signature bpf_loop expects, and `search` outlives the call
    // (bpf_loop returns after the last iteration).
    unsafe {
        bpf_loop(
            tries,
            try_next_port as *mut c_void,
            search as *mut PortSearch as *mut c_void,
            0,
        );
    }
    match search.outcome {
        SEARCH_CLAIMED => Ok(true),
        SEARCH_TABLE_FULL => Err(Counter::DropTableFull),
        _ => Ok(false),
    }
}

/// Port searches per new flow: a port the search claims but the host turns out to use is
/// given back and the search starts again, this many times at most.
const SEARCHES: u32 = 3;

/// Create the mapping for the new outbound flow `key` and return its `NAT_OUT` entry.
#[inline(always)]
pub fn create_mapping(
    ctx: &TcContext,
    key: &FlowKey,
    cfg: &Settings,
) -> Result<*mut NatEntry, Counter> {
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let original_port = u16::from_be(key.src_port);
    let (lo, hi) = port_range(key.proto, original_port, cfg.port_min, cfg.port_max);
    let mut search = PortSearch {
        reply: FlowKey::new(
            key.dst_addr,
            cfg.external_addr,
            key.dst_port,
            key.src_port,
            key.proto,
        ),
        inbound: NatEntry {
            last_seen_ns: now,
            created_ns: now,
            addr: key.src_addr,
            port: key.src_port,
            ..NatEntry::default()
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

    let in_range = (original_port as u32) >= lo && (original_port as u32) <= hi;
    let mut claimed = in_range
        && !host_uses(ctx, &search.reply)
        && keep_own_port(&search.reply, &search.inbound, key)?;
    let mut searches = 0;
    while !claimed && searches < SEARCHES {
        searches += 1;
        if !search_port(&mut search)? {
            break;
        }
        if host_uses(ctx, &search.reply) {
            // Give it back: the host's socket keeps it, the next search starts elsewhere.
            let _ = NAT_IN.remove(search.reply);
            continue;
        }
        claimed = true;
    }
    if !claimed {
        return Err(Counter::DropNoPort);
    }
    let reply = &search.reply;

    let mut flags = NAT_FLAG_ORIGINAL;
    if reply.dst_port != key.src_port {
        flags |= NAT_FLAG_PORT_REMAPPED;
    }
    // The original half is written over the search's copy of the reply half (inserted
    // already): the egress program's stack has no room for a second entry.
    let outbound = &mut search.inbound;
    outbound.addr = cfg.external_addr;
    outbound.port = reply.dst_port;
    outbound.flags = flags;
    match NAT_OUT.insert(key, *outbound, BPF_NOEXIST as u64) {
        Ok(()) => count(Counter::NewMappings),
        Err(e) if e == -EEXIST => {
            // Another CPU mapped this same flow an instant earlier: use its mapping. Give
            // our port back only if its mapping uses another one. With the port kept, both
            // CPUs hold the same reply entry (one claimed it, the other found it held by the
            // same flow), and removing it would leave the winner's mapping without its reply
            // half.
            let winner_port = NAT_OUT.get_ptr(key).map(|w| {
                // SAFETY: a pointer from a successful map lookup is non-null, aligned and
                // valid for the whole program run (the verifier checks the lookup's result
                // before any use).
                unsafe { (*w).port }
            });
            if winner_port != Some(reply.dst_port) {
                let _ = NAT_IN.remove(reply);
            }
        }
        Err(_) => {
            // The table is full: give the port back.
            let _ = NAT_IN.remove(reply);
            return Err(Counter::DropTableFull);
        }
    }
    NAT_OUT.get_ptr_mut(key).ok_or(Counter::DropTableFull)
}

/// What a TCP segment says of its sender's sequence space (host order).
#[derive(Clone, Copy)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// `seq` plus the payload's length, plus one for a SYN and for a FIN.
    pub end: u32,
}

/// `lo <= x <= hi` in sequence-number space (modulo 2^32).
#[inline(always)]
fn seq_between(x: u32, lo: u32, hi: u32) -> bool {
    x.wrapping_sub(lo) <= hi.wrapping_sub(lo)
}

/// Whether `a` comes after `b` in sequence-number space.
#[inline(always)]
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Whether a RST or FIN from the direction of `entry` is inside the connection's window, as
/// nf_conntrack's `tcp_in_window` requires before it changes a connection's state: its
/// sequence number lies between what the other direction (`peer`, the other half, if any)
/// has acknowledged and what this one has sent (a RST carries the sender's next sequence
/// number, or the acknowledgement number of the segment it answers). A sender that has sent
/// nothing yet can only be refusing the other side's SYN, and must acknowledge it exactly.
/// With nothing known of either side (a connection picked up mid-stream) there is nothing to
/// check.
#[inline(always)]
fn in_window(entry: *mut NatEntry, seg: &Segment, peer: Option<*mut NatEntry>) -> bool {
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (own_seen, own_end) = unsafe { ((*entry).tcp_flags, (*entry).seq_end) };
    let (peer_seen, peer_end, peer_ack) = match peer {
        // SAFETY: as above.
        Some(p) => unsafe { ((*p).tcp_flags, (*p).seq_end, (*p).max_ack) },
        None => (0, 0, 0),
    };
    if own_seen & TCP_SEEN_SEQ != 0 {
        let lo = if peer_seen & TCP_SEEN_ACK != 0 && !seq_after(peer_ack, own_end) {
            peer_ack
        } else {
            own_end
        };
        return seq_between(seg.seq, lo, own_end);
    }
    if peer_seen & TCP_SEEN_SEQ != 0 && seg.flags & TCP_RST != 0 {
        return seg.flags & TCP_ACK != 0 && seg.ack == peer_end;
    }
    true
}

/// Record a TCP segment on the entry of its direction: its flags, and how far its sequence
/// space and its acknowledgements go. A RST outside the window is refused
/// (`drop_tcp_window`); a FIN outside it is let through without touching the state. The
/// other half (`peer`: its lookup, in whichever family's table) is looked up once, and only
/// for a RST or a FIN, so the common case costs no extra lookup.
#[inline(always)]
pub fn track_tcp(
    entry: *mut NatEntry,
    seg: &Segment,
    peer: impl FnOnce() -> Option<*mut NatEntry>,
) -> Result<(), Counter> {
    let mut flags = seg.flags;
    let peer = if flags & (TCP_RST | TCP_FIN) != 0 {
        peer()
    } else {
        None
    };
    if flags & (TCP_RST | TCP_FIN) != 0 && !in_window(entry, seg, peer) {
        if flags & TCP_RST != 0 {
            return Err(Counter::DropTcpWindow);
        }
        count(Counter::TcpFinIgnored);
        flags &= !TCP_FIN;
    }
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (seen, seq_end, max_ack) =
        unsafe { ((*entry).tcp_flags, (*entry).seq_end, (*entry).max_ack) };
    let mut bits = flags & (TCP_SEEN_FIN | TCP_SEEN_SYN | TCP_SEEN_RST | TCP_SEEN_ACK);
    bits |= TCP_SEEN_SEQ;
    if flags & TCP_ACK != 0 && seen & TCP_SEEN_PEER_FIN != 0 {
        bits |= TCP_SEEN_ACKED_PEER_FIN;
    }
    // Plain stores: a direction is normally handled by one CPU at a time; a lost update only
    // shortens or lengthens one idle timeout, or widens the window a little.
    if bits & !seen != 0 {
        // SAFETY: as above.
        unsafe { (*entry).tcp_flags = seen | bits };
    }
    if seen & TCP_SEEN_SEQ == 0 || seq_after(seg.end, seq_end) {
        // SAFETY: as above.
        unsafe { (*entry).seq_end = seg.end };
    }
    if flags & TCP_ACK != 0 && (seen & TCP_SEEN_ACK == 0 || seq_after(seg.ack, max_ack)) {
        // SAFETY: as above.
        unsafe { (*entry).max_ack = seg.ack };
    }
    if flags & TCP_FIN != 0 && seen & TCP_SEEN_FIN == 0 {
        if let Some(peer) = peer {
            // SAFETY: as above.
            unsafe { (*peer).tcp_flags |= TCP_SEEN_PEER_FIN };
        }
    }
    Ok(())
}

/// A new SYN on a mapping whose connection is over (TIME_WAIT, CLOSE, or both sides closed)
/// starts a new connection on the same mapping, as the kernel reuses TIME_WAIT entries.
/// `entry` is the half of the side that opens connections (the container's for masqueraded
/// flows, the client's for published ones); `peer` looks the other half up.
#[inline(always)]
pub fn reopen_if_closed(
    entry: *mut NatEntry,
    flags: u8,
    peer: impl FnOnce() -> Option<*mut NatEntry>,
) {
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return;
    }
    let Some(peer) = peer() else {
        return;
    };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let state = unsafe { tcp_state((*entry).tcp_flags, (*peer).tcp_flags) };
    // Not LAST_ACK: the last ACK may still be on its way, and the kernel does not reopen
    // it either.
    if state.reusable() {
        // A new connection: no flags, and its age (and a SYN_SENT's timeout) from now (the
        // entry was just stamped with this packet's time).
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for
        // the whole program run (the verifier checks the lookup's result before any use).
        unsafe {
            let now = (*entry).last_seen_ns;
            (*entry).tcp_flags = 0;
            (*entry).created_ns = now;
            (*peer).tcp_flags = 0;
            (*peer).created_ns = now;
        }
        count(Counter::TcpReopened);
    }
}

/// A connection arriving for a published port: create its mapping, initiator first
/// (`NAT_IN`, keyed by the packet as it arrives; reserved with `BPF_NOEXIST`), then the
/// container's reply direction (`NAT_OUT`). Returns the `NAT_IN` entry.
#[inline(always)]
pub fn create_published_mapping(
    key: &FlowKey,
    target: &PublishTarget,
    cfg: &Settings,
) -> Result<*mut NatEntry, Counter> {
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // One entry on the stack for both halves (the ingress program's stack is nearly full):
    // the client's half first, then the container's written over it.
    let mut half = NatEntry {
        last_seen_ns: now,
        created_ns: now,
        addr: target.addr,
        port: target.port,
        flags: NAT_FLAG_PUBLISHED,
        ..NatEntry::default()
    };
    match NAT_IN.insert(key, half, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU created it an instant earlier: use theirs.
        Err(e) if e == -EEXIST => return NAT_IN.get_ptr_mut(key).ok_or(Counter::DropTableFull),
        Err(_) => return Err(Counter::DropTableFull),
    }
    // The container answers from its own address and port to the client.
    let reply = FlowKey::new(
        target.addr,
        key.src_addr,
        target.port,
        key.src_port,
        key.proto,
    );
    half.addr = key.dst_addr;
    half.port = key.dst_port;
    half.flags = NAT_FLAG_PUBLISHED | NAT_FLAG_ORIGINAL;
    if NAT_OUT.insert(reply, half, BPF_NOEXIST as u64).is_err() {
        let _ = NAT_IN.remove(key);
        return Err(Counter::DropTableFull);
    }
    count(Counter::PublishedMappings);
    embryonic::admit(key, now, cfg.embryonic_slots);
    NAT_IN.get_ptr_mut(key).ok_or(Counter::DropTableFull)
}

/// Where a published host port leads, if it is published (on this address or on all) to a
/// container that may be reached from outside: never one on an internal network, whatever
/// the table says (a publish kept across a restart into a bridge now internal).
#[inline(always)]
pub fn published(proto: u8, host_addr: u32, host_port: u16) -> Option<PublishTarget> {
    let target = published_target(proto, host_addr, host_port)?;
    match fwd::bridge_of(target.addr) {
        Some(bridge) if fwd::is_internal_bridge(bridge) => None,
        _ => Some(target),
    }
}

/// The published-port table's entry for a host port (on this address or on all).
#[inline(always)]
fn published_target(proto: u8, host_addr: u32, host_port: u16) -> Option<PublishTarget> {
    let exact = PublishKey {
        host_addr,
        host_port,
        proto,
        pad: 0,
    };
    if let Some(t) = PUBLISH.get_ptr(exact) {
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
        // whole program run (the verifier checks the lookup's result before any use).
        return Some(unsafe { *t });
    }
    let any = PublishKey {
        host_addr: 0,
        host_port,
        proto,
        pad: 0,
    };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    PUBLISH.get_ptr(any).map(|t| unsafe { *t })
}
