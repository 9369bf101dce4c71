//! ICMP errors (destination unreachable, time exceeded, parameter problem) about translated
//! flows: the outer address and the quoted packet are translated like the flow itself, so
//! traceroute and path-MTU discovery work through the NAT.

use aya_ebpf::programs::TcContext;
use bpfnat_common::{Counter, FlowKey};

use crate::{
    csum::{rewrite_ip_addr, Quote},
    maps::{NAT_IN, NAT_OUT},
    parse::{IcmpError, IP_DST_OFF, IP_SRC_OFF},
    stats::count,
};

/// The quoted packet's key in the direction it was sent.
#[inline(always)]
fn quoted_key(err: &IcmpError) -> FlowKey {
    let q = &err.inner;
    FlowKey::new(q.src_addr, q.dst_addr, q.src_port, q.dst_port, q.proto)
}

/// An error arriving on the uplink about a packet we sent for a container: the quote holds
/// our external source; give the error to the container with its own address and port.
/// Returns the container's address, or `None` if the error is about no mapping of ours.
#[inline(always)]
pub fn translate_inbound(ctx: &TcContext, err: &IcmpError) -> Result<Option<u32>, Counter> {
    // Quoted packet = original direction after translation; its reverse is our reply key.
    let Some(entry) = NAT_IN.get_ptr(quoted_key(err).reversed()) else {
        return Ok(None);
    };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (addr, port) = unsafe { ((*entry).addr, (*entry).port) };
    let q = &err.inner;
    rewrite_ip_addr(ctx, IP_DST_OFF, err.dst_addr, addr)?;
    rewrite_quoted(
        ctx,
        err,
        err.inner_ip_off + 12,
        q.src_addr,
        addr,
        q.l4.src_port_off,
        q.src_port,
        port,
    )?;
    count(Counter::IcmpErrorsTranslated);
    Ok(Some(addr))
}

/// An error a container sends about a reply it received: the quote holds the container's
/// address as destination; show the outside our external address and port instead.
#[inline(always)]
pub fn translate_outbound(ctx: &TcContext, err: &IcmpError) -> Result<bool, Counter> {
    // Quoted packet = reply direction before translation back; its reverse is the original key.
    let Some(entry) = NAT_OUT.get_ptr(quoted_key(err).reversed()) else {
        return Ok(false);
    };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (addr, port) = unsafe { ((*entry).addr, (*entry).port) };
    let q = &err.inner;
    rewrite_ip_addr(ctx, IP_SRC_OFF, err.src_addr, addr)?;
    rewrite_quoted(
        ctx,
        err,
        err.inner_ip_off + 16,
        q.dst_addr,
        addr,
        q.l4.dst_port_off,
        q.dst_port,
        port,
    )?;
    count(Counter::IcmpErrorsTranslated);
    Ok(true)
}

/// Rewrite one address and one port of the quoted packet, with the quoted IP header checksum,
/// the quoted L4 checksum (when quoted) and the outer ICMP checksum.
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "the offsets and values of one rewrite; a struct would cost stack in a BPF program"
)]
fn rewrite_quoted(
    ctx: &TcContext,
    err: &IcmpError,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), Counter> {
    let quote = Quote {
        icmp_csum_off: err.icmp_csum_off,
    };
    let l4 = &err.inner.l4;
    quote.set32(ctx, addr_off, old_addr, new_addr)?;
    quote.fix_checksum(ctx, err.inner_ip_off + 10, old_addr, new_addr, false)?;
    if l4.pseudo_header && l4.csum_off != 0 {
        quote.fix_checksum(ctx, l4.csum_off, old_addr, new_addr, l4.udp)?;
    }
    if old_port != new_port {
        quote.set16(ctx, port_off, old_port, new_port)?;
        if l4.csum_off != 0 {
            quote.fix_checksum(ctx, l4.csum_off, old_port as u32, new_port as u32, l4.udp)?;
        }
    }
    Ok(())
}
