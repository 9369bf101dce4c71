//! Hairpin: a container reaching a published port through the host's uplink address (from
//! another container or from the published one itself). Both addresses change: the
//! destination becomes the published container, and the source becomes the bridge's gateway
//! so that the answer comes back through the host (here) instead of going straight to the
//! asking container, which would not recognise it. This is Docker's hairpin MASQUERADE.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use bpfnat_common::{
    wire::{TCP_FIN, TCP_RST},
    Counter, FlowKey, HairpinEntry, PublishTarget,
};

use crate::{
    csum::{rewrite_addr, rewrite_port},
    host,
    maps::HAIRPIN,
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

/// A packet of the hairpin connection `entry`: stamp it, note the FIN and RST a TCP segment
/// carries (the sweeper ages a closed connection sooner), and return the rewrite.
#[inline(always)]
pub fn touch(entry: *mut HairpinEntry, pkt: &Packet) -> HairpinEntry {
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST);
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        if closing & !(*entry).tcp_flags != 0 {
            (*entry).tcp_flags |= closing;
        }
        *entry
    }
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
    let mut gw_port = pkt.src_port;
    let mut i = 0;
    while i < TRIES {
        // The answer's direction, as the published container will send it.
        let back_key = FlowKey::new(target.addr, gateway, target.port, gw_port, pkt.proto);
        // A gateway port the host uses with that container (or has bound) is the host's.
        if host::has_socket(ctx, pkt.proto, target.addr, gateway, target.port, gw_port) {
            count(Counter::PortHostOwned);
            // SAFETY: bpf_get_prandom_u32 takes no arguments and has no preconditions.
            gw_port = ((1024 + unsafe { bpf_get_prandom_u32() } % 64512) as u16).to_be();
            i += 1;
            continue;
        }
        let back = HairpinEntry {
            last_seen_ns: now,
            src_addr: pkt.dst_addr,
            dst_addr: pkt.src_addr,
            src_port: pkt.dst_port,
            dst_port: pkt.src_port,
            tcp_flags: 0,
            pad: [0; 3],
        };
        if HAIRPIN.insert(back_key, back, BPF_NOEXIST as u64).is_ok() {
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
                let _ = HAIRPIN.remove(back_key);
                return Err(Counter::DropTableFull);
            }
            return Ok(out);
        }
        // SAFETY: bpf_get_prandom_u32 takes no arguments and has no preconditions.
        gw_port = ((1024 + unsafe { bpf_get_prandom_u32() } % 64512) as u16).to_be();
        i += 1;
    }
    Err(Counter::DropNoPort)
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
