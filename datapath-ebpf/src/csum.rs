//! Header rewrites with checksum fix-ups.
//!
//! Always through the kernel helpers, never by hand: they do the right thing for every
//! `skb->ip_summed` state. With `CHECKSUM_PARTIAL` (veth, most container traffic) the L4 field
//! holds only the pseudo-header sum, so an address change (in the pseudo-header) must update it
//! (`BPF_F_PSEUDO_HDR`) but a port change must not (the port is summed later with the payload);
//! with a full checksum both are folded into the field; with `CHECKSUM_COMPLETE` the helpers
//! also keep `skb->csum` right.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use bpfnat_common::Counter;

use crate::parse::{IP_CSUM_OFF, L4};

/// Replace the IPv4 address at `addr_off` (source or destination) with `new`.
#[inline(always)]
pub fn rewrite_addr(
    ctx: &TcContext,
    l4: &L4,
    addr_off: usize,
    old: u32,
    new: u32,
) -> Result<(), Counter> {
    if l4.pseudo_header {
        ctx.l4_csum_replace(
            l4.csum_off,
            old as u64,
            new as u64,
            BPF_F_PSEUDO_HDR as u64 | 4 | l4.csum_flags,
        )
        .map_err(|_| Counter::DropRewriteFailed)?;
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)
        .map_err(|_| Counter::DropRewriteFailed)?;
    ctx.store(addr_off, &new, 0)
        .map_err(|_| Counter::DropRewriteFailed)
}

/// Replace the port (or ICMP identifier) at `port_off` with `new`.
#[inline(always)]
pub fn rewrite_port(
    ctx: &TcContext,
    l4: &L4,
    port_off: usize,
    old: u16,
    new: u16,
) -> Result<(), Counter> {
    if old == new {
        return Ok(());
    }
    // Size 2 and no BPF_F_PSEUDO_HDR: ports are not part of the pseudo-header.
    ctx.l4_csum_replace(l4.csum_off, old as u64, new as u64, 2 | l4.csum_flags)
        .map_err(|_| Counter::DropRewriteFailed)?;
    ctx.store(port_off, &new, 0)
        .map_err(|_| Counter::DropRewriteFailed)
}
