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
use bpfnat_common::{Counter, FlowKey, HairpinEntry, PublishTarget};

use crate::{
    csum::{rewrite_addr, rewrite_port},
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

/// The rewrite for a packet of a known hairpin connection (either direction).
#[inline(always)]
pub fn lookup(pkt: &Packet) -> Option<HairpinEntry> {
    let entry = HAIRPIN.get_ptr_mut(key_of(pkt))?;
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        Some(*entry)
    }
}

/// A new hairpin connection from `pkt` (to the host's address and a published port) to
/// `target`, sourced from `gateway`. Returns the rewrite of this first packet.
#[inline(always)]
pub fn create(pkt: &Packet, target: &PublishTarget, gateway: u32) -> Result<HairpinEntry, Counter> {
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut gw_port = pkt.src_port;
    let mut i = 0;
    while i < TRIES {
        // The answer's direction, as the published container will send it.
        let back_key = FlowKey::new(target.addr, gateway, target.port, gw_port, pkt.proto);
        let back = HairpinEntry {
            last_seen_ns: now,
            src_addr: pkt.dst_addr,
            dst_addr: pkt.src_addr,
            src_port: pkt.dst_port,
            dst_port: pkt.src_port,
            pad: 0,
        };
        if HAIRPIN.insert(back_key, back, BPF_NOEXIST as u64).is_ok() {
            let out = HairpinEntry {
                last_seen_ns: now,
                src_addr: gateway,
                dst_addr: target.addr,
                src_port: gw_port,
                dst_port: target.port,
                pad: 0,
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
