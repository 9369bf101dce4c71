//! Hairpin: a container reaching a published port through the host's uplink address (from
//! another container or from the published one itself). Both addresses change: the
//! destination becomes the published container, and the source becomes the bridge's gateway
//! so that the answer comes back through the host (here) instead of going straight to the
//! asking container, which would not recognise it. This is Docker's hairpin MASQUERADE.
//!
//! Both families: `HAIRPIN` (IPv4, [`find`], [`touch`], [`create`], [`rewrite`]) and
//! `HAIRPIN6` (IPv6, the same with a `6`). The gateway port search and the stamping of a
//! known connection are shared; only the keys and the rewrites differ.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use bpfnat_common::{
    wire::{TCP_FIN, TCP_RST},
    Counter, FlowKey, FlowKey6, HairpinEntry, HairpinEntry6, PublishTarget, PublishTarget6,
};

use crate::{
    csum::{rewrite_addr, rewrite_addr6, rewrite_port, rewrite_port_stored},
    host,
    ipv6::{Packet6, IP6_DST_OFF, IP6_SRC_OFF},
    maps::{HAIRPIN, HAIRPIN6},
    parse::{Packet, IP_DST_OFF, IP_SRC_OFF},
    stats::count,
};

/// Gateway ports tried for a new hairpin connection: its own port first, then random ones
/// above 1024. Few tries: the gateway's port space only holds hairpin connections.
const TRIES: u32 = 8;

#[inline(always)]
fn key_of(pkt: &Packet) -> FlowKey {
    FlowKey::new(
        pkt.src_addr,
        pkt.dst_addr,
        pkt.src_port,
        pkt.dst_port,
        pkt.proto,
    )
}

/// The entry of a known hairpin connection (either direction) for `pkt`.
#[inline(always)]
pub fn find(pkt: &Packet) -> Option<*mut HairpinEntry> {
    HAIRPIN.get_ptr_mut(key_of(pkt))
}

/// [`find`] for IPv6.
#[inline(always)]
pub fn find6(pkt: &Packet6) -> Option<*mut HairpinEntry6> {
    HAIRPIN6.get_ptr_mut(pkt.key())
}

/// Stamp a direction of a hairpin connection (its `last_seen_ns` and `tcp_flags` fields)
/// with a packet carrying TCP flags `flags`: the time, and the FIN and RST it carries (the
/// sweeper ages a closed connection sooner).
///
/// # Safety
/// Both pointers are fields of one entry from a successful map lookup.
#[inline(always)]
unsafe fn stamp(last_seen_ns: *mut u64, tcp_flags: *mut u8, flags: u8) {
    let closing = flags & (TCP_FIN | TCP_RST);
    // SAFETY: the caller's pointers are valid for the whole program run; the clock helper
    // has no preconditions.
    unsafe {
        *last_seen_ns = bpf_ktime_get_ns();
        // Written only when it changes: most packets carry neither flag.
        if closing & !*tcp_flags != 0 {
            *tcp_flags |= closing;
        }
    }
}

/// A packet of the hairpin connection `entry`: stamp it and return the rewrite.
#[inline(always)]
pub fn touch(entry: *mut HairpinEntry, pkt: &Packet) -> HairpinEntry {
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    unsafe {
        stamp(
            &raw mut (*entry).last_seen_ns,
            &raw mut (*entry).tcp_flags,
            pkt.tcp_flags,
        );
        *entry
    }
}

/// [`touch`] for IPv6.
#[inline(always)]
pub fn touch6(entry: *mut HairpinEntry6, pkt: &Packet6) -> HairpinEntry6 {
    // SAFETY: as in `touch`.
    unsafe {
        stamp(
            &raw mut (*entry).last_seen_ns,
            &raw mut (*entry).tcp_flags,
            pkt.tcp_flags,
        );
        *entry
    }
}

/// A random gateway port above 1024 (network order).
#[inline(always)]
fn random_port() -> u16 {
    // SAFETY: bpf_get_prandom_u32 takes no arguments and has no preconditions.
    ((1024 + unsafe { bpf_get_prandom_u32() } % 64512) as u16).to_be()
}

/// The gateway port of a new hairpin connection, both families: the asking side's own
/// `port` first, then random ones, [`TRIES`] in all. A port the host uses with the target
/// (`host_owns`: a connected socket of the answer's tuple, or one bound to the gateway's
/// port) is the host's; otherwise `claim` reserves the answer's tuple (`false`: another
/// connection holds it, or the table refused it).
#[inline(always)]
fn claim_gateway_port(
    mut port: u16,
    host_owns: impl Fn(u16) -> bool,
    mut claim: impl FnMut(u16) -> bool,
) -> Result<u16, Counter> {
    let mut i = 0;
    while i < TRIES {
        if host_owns(port) {
            count(Counter::PortHostOwned);
        } else if claim(port) {
            return Ok(port);
        }
        port = random_port();
        i += 1;
    }
    Err(Counter::DropNoPort)
}

/// A new hairpin connection from `pkt` (to the host's address and a published port) to
/// `target`, sourced from `gateway`. Returns the rewrite of this first packet.
#[inline(always)]
pub fn create(
    ctx: &TcContext,
    pkt: &Packet,
    target: &PublishTarget,
    gateway: u32,
) -> Result<HairpinEntry, Counter> {
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // The answer's direction, as the published container will send it, is rewritten back to
    // what the asking side sent.
    let back = HairpinEntry {
        last_seen_ns: now,
        src_addr: pkt.dst_addr,
        dst_addr: pkt.src_addr,
        src_port: pkt.dst_port,
        dst_port: pkt.src_port,
        tcp_flags: 0,
        pad: [0; 3],
    };
    let back_key = |port| FlowKey::new(target.addr, gateway, target.port, port, pkt.proto);
    let gw_port = claim_gateway_port(
        pkt.src_port,
        |port| host::has_socket(ctx, pkt.proto, target.addr, gateway, target.port, port),
        |port| {
            HAIRPIN
                .insert(back_key(port), back, BPF_NOEXIST as u64)
                .is_ok()
        },
    )?;
    let out = HairpinEntry {
        last_seen_ns: now,
        src_addr: gateway,
        dst_addr: target.addr,
        src_port: gw_port,
        dst_port: target.port,
        tcp_flags: 0,
        pad: [0; 3],
    };
    if HAIRPIN.insert(key_of(pkt), out, 0).is_err() {
        let _ = HAIRPIN.remove(back_key(gw_port));
        return Err(Counter::DropTableFull);
    }
    Ok(out)
}

/// [`create`] for IPv6: sourced from the IPv6 `gateway` of the target's bridge.
#[inline(always)]
pub fn create6(
    ctx: &TcContext,
    pkt: &Packet6,
    target: &PublishTarget6,
    gateway: &[u32; 4],
) -> Result<HairpinEntry6, Counter> {
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let back = HairpinEntry6 {
        last_seen_ns: now,
        src_addr: pkt.dst_addr,
        dst_addr: pkt.src_addr,
        src_port: pkt.dst_port,
        dst_port: pkt.src_port,
        tcp_flags: 0,
        pad: [0; 3],
    };
    let back_key = |port| FlowKey6::new(target.addr, *gateway, target.port, port, pkt.proto);
    let gw_port = claim_gateway_port(
        pkt.src_port,
        |port| host::has_socket6(ctx, pkt.proto, target.addr, *gateway, target.port, port),
        |port| {
            HAIRPIN6
                .insert(back_key(port), back, BPF_NOEXIST as u64)
                .is_ok()
        },
    )?;
    let out = HairpinEntry6 {
        last_seen_ns: now,
        src_addr: *gateway,
        dst_addr: target.addr,
        src_port: gw_port,
        dst_port: target.port,
        tcp_flags: 0,
        pad: [0; 3],
    };
    if HAIRPIN6.insert(pkt.key(), out, 0).is_err() {
        let _ = HAIRPIN6.remove(back_key(gw_port));
        return Err(Counter::DropTableFull);
    }
    Ok(out)
}

/// Rewrite the packet to `to` (both ends).
#[inline(always)]
pub fn rewrite(ctx: &TcContext, pkt: &Packet, to: &HairpinEntry) -> Result<(), Counter> {
    rewrite_port(ctx, &pkt.l4, pkt.l4.src_port_off, pkt.src_port, to.src_port)?;
    rewrite_port(ctx, &pkt.l4, pkt.l4.dst_port_off, pkt.dst_port, to.dst_port)?;
    rewrite_addr(ctx, &pkt.l4, IP_SRC_OFF, pkt.src_addr, to.src_addr)?;
    rewrite_addr(ctx, &pkt.l4, IP_DST_OFF, pkt.dst_addr, to.dst_addr)?;
    count(Counter::HairpinTranslated);
    Ok(())
}

/// [`rewrite`] for IPv6: the ports through the store helper (the parse lives in a map slot,
/// so the verifier cannot bound its offsets), each address as one 128-bit checksum
/// difference through the pseudo-header.
#[inline(always)]
pub fn rewrite6(ctx: &TcContext, pkt: &Packet6, to: &HairpinEntry6) -> Result<(), Counter> {
    rewrite_port_stored(ctx, &pkt.l4, pkt.l4.src_port_off, pkt.src_port, to.src_port)?;
    rewrite_port_stored(ctx, &pkt.l4, pkt.l4.dst_port_off, pkt.dst_port, to.dst_port)?;
    rewrite_addr6(ctx, &pkt.l4, IP6_SRC_OFF, pkt.src_addr, to.src_addr)?;
    rewrite_addr6(ctx, &pkt.l4, IP6_DST_OFF, pkt.dst_addr, to.dst_addr)?;
    count(Counter::HairpinTranslated);
    Ok(())
}
