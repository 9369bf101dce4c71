//! ICMPv6 errors (destination unreachable, packet too big, time exceeded, parameter
//! problem) about translated IPv6 flows: the outer address and the quoted packet are
//! translated like the flow itself, so path-MTU discovery and traceroute6 work through NAT66.
//! In IPv6 routers never fragment: a "packet too big" that does not reach the container
//! breaks every large transfer.
//!
//! The outer change goes into the ICMPv6 checksum through the pseudo-header; the quoted
//! address and port are data of the message, folded into it as such, and the quoted L4
//! checksum (which covers the quoted packet's own pseudo-header) is updated arithmetically.

use aya_ebpf::programs::TcContext;
use bpfnat_common::{Counter, FlowKey6};

use crate::{
    csum::{rewrite_addr6, Quote},
    ipv6::{Packet6, IP6_DST_OFF, IP6_SRC_OFF},
    maps::{NAT6_IN, NAT6_OUT},
    stats::count,
};

/// The key of the quoted packet's other direction.
#[inline(always)]
fn quoted_reversed(pkt: &Packet6) -> FlowKey6 {
    FlowKey6::new(
        pkt.inner_dst,
        pkt.inner_src,
        pkt.inner_dport,
        pkt.inner_sport,
        pkt.inner_proto,
    )
}

/// An error arriving on the uplink about a packet we sent for a container (the quote holds
/// our external address and port as its source): give it to the container, with its own.
/// `Ok(false)`: about no mapping of ours.
#[inline(never)]
pub fn translate_inbound6(ctx: &TcContext, pkt: &Packet6) -> Result<bool, Counter> {
    let Some(entry) = NAT6_IN.get_ptr(quoted_reversed(pkt)) else {
        return Ok(false);
    };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (addr, port) = unsafe { ((*entry).addr, (*entry).entry.port) };
    rewrite_addr6(ctx, &pkt.l4, IP6_DST_OFF, pkt.dst_addr, addr)?;
    rewrite_quoted6(
        ctx,
        pkt,
        pkt.inner_off + 8,
        pkt.inner_src,
        addr,
        pkt.inner_l4.src_port_off,
        pkt.inner_sport,
        port,
    )?;
    count(Counter::IcmpErrorsTranslated);
    Ok(true)
}

/// An error a container sends about a reply it received (the quote holds the container's
/// address as its destination): show the outside our external address and port.
/// `Ok(false)`: about no mapping of ours.
#[inline(never)]
pub fn translate_outbound6(ctx: &TcContext, pkt: &Packet6) -> Result<bool, Counter> {
    let Some(entry) = NAT6_OUT.get_ptr(quoted_reversed(pkt)) else {
        return Ok(false);
    };
    // SAFETY: as above.
    let (addr, port) = unsafe { ((*entry).addr, (*entry).entry.port) };
    rewrite_addr6(ctx, &pkt.l4, IP6_SRC_OFF, pkt.src_addr, addr)?;
    rewrite_quoted6(
        ctx,
        pkt,
        pkt.inner_off + 24,
        pkt.inner_dst,
        addr,
        pkt.inner_l4.dst_port_off,
        pkt.inner_dport,
        port,
    )?;
    count(Counter::IcmpErrorsTranslated);
    Ok(true)
}

/// Rewrite one address and one port of the quoted packet, with the quoted L4 checksum (when
/// quoted) and the outer ICMPv6 checksum.
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "the offsets and values of one rewrite; a struct would cost stack in a BPF program"
)]
fn rewrite_quoted6(
    ctx: &TcContext,
    pkt: &Packet6,
    addr_off: usize,
    old_addr: [u32; 4],
    new_addr: [u32; 4],
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), Counter> {
    let quote = Quote {
        icmp_csum_off: pkt.l4.csum_off,
    };
    let l4 = &pkt.inner_l4;
    let diff = quote.set128(ctx, addr_off, old_addr, new_addr)?;
    if l4.csum_off != 0 {
        quote.fix_checksum_diff(ctx, l4.csum_off, diff, l4.udp)?;
    }
    if old_port != new_port {
        quote.set16(ctx, port_off, old_port, new_port)?;
        if l4.csum_off != 0 {
            quote.fix_checksum(ctx, l4.csum_off, old_port as u32, new_port as u32, l4.udp)?;
        }
    }
    Ok(())
}
