//! TC programs of the NAT datapath. Entry points are thin: each calls a `try_*` function and
//! turns its error into a counted drop. The logic lives in one module per concern:
//! `parse` (headers), `csum` (rewrites with checksum fix-ups), `nat` (mappings), `maps`,
//! `stats` (counters).
#![no_std]
#![no_main]
// For `atomic_xadd` (see nat::touch); this crate is built with nightly only.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod csum;
mod maps;
mod nat;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::warn;
use bpfnat_common::{Counter, FlowKey, IPPROTO_ICMP};

use crate::{
    csum::{rewrite_addr, rewrite_port},
    maps::{NAT_IN, NAT_OUT},
    nat::{config, create_mapping, is_internal, touch},
    parse::{parse, Parsed, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IP_DST_OFF, IP_SRC_OFF},
    stats::count,
};

#[inline(always)]
fn pass(reason: Counter) -> i32 {
    count(reason);
    TC_ACT_OK
}

#[inline(always)]
fn drop_packet(ctx: &TcContext, reason: Counter) -> i32 {
    count(reason);
    // Only the rare, operator-relevant drops are logged; never per ordinary packet.
    match reason {
        Counter::DropNoPort => warn!(ctx, "no free external port: packet dropped"),
        Counter::DropTableFull => warn!(ctx, "connection table full: packet dropped"),
        _ => {}
    }
    TC_ACT_SHOT
}

/// Uplink egress: masquerade the source of packets from internal subnets.
#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    match try_nat_egress(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

#[inline(always)]
fn try_nat_egress(ctx: &TcContext) -> Result<i32, Counter> {
    count(Counter::EgressPackets);
    let pkt = match parse(ctx)? {
        Parsed::Packet(pkt) => pkt,
        Parsed::Pass(reason) => return Ok(pass(reason)),
    };
    let Some(cfg) = config() else {
        return Ok(pass(Counter::PassNoMatch));
    };
    if pkt.proto == IPPROTO_ICMP && pkt.icmp_type != ICMP_ECHO_REQUEST {
        return Ok(pass(Counter::PassUnsupportedProto));
    }

    let key = FlowKey::new(
        pkt.src_addr,
        pkt.dst_addr,
        pkt.src_port,
        pkt.dst_port,
        pkt.proto,
    );
    let entry = match NAT_OUT.get_ptr_mut(key) {
        Some(entry) => entry,
        None => {
            // Only traffic from the internal subnets is ours; the host's own traffic
            // (already sourced from the uplink address) passes untouched.
            if !is_internal(pkt.src_addr) {
                return Ok(pass(Counter::PassNoMatch));
            }
            create_mapping(&key, &cfg)?
        }
    };
    touch(entry, ctx.len());
    let (addr, port) = unsafe { ((*entry).addr, (*entry).port) };

    rewrite_port(ctx, &pkt.l4, pkt.l4.src_port_off, pkt.src_port, port)?;
    rewrite_addr(ctx, &pkt.l4, IP_SRC_OFF, pkt.src_addr, addr)?;
    count(Counter::EgressTranslated);
    Ok(TC_ACT_OK)
}

/// Uplink ingress: send replies of masqueraded flows back to their internal address.
#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    match try_nat_ingress(&ctx) {
        Ok(action) => action,
        Err(reason) => drop_packet(&ctx, reason),
    }
}

#[inline(always)]
fn try_nat_ingress(ctx: &TcContext) -> Result<i32, Counter> {
    count(Counter::IngressPackets);
    let pkt = match parse(ctx)? {
        Parsed::Packet(pkt) => pkt,
        Parsed::Pass(reason) => return Ok(pass(reason)),
    };
    let Some(cfg) = config() else {
        return Ok(pass(Counter::PassNoMatch));
    };
    if pkt.dst_addr != cfg.external_addr {
        return Ok(pass(Counter::PassNoMatch));
    }
    if pkt.proto == IPPROTO_ICMP && pkt.icmp_type != ICMP_ECHO_REPLY {
        return Ok(pass(Counter::PassUnsupportedProto));
    }

    let key = FlowKey::new(
        pkt.src_addr,
        pkt.dst_addr,
        pkt.src_port,
        pkt.dst_port,
        pkt.proto,
    );
    let Some(entry) = NAT_IN.get_ptr_mut(key) else {
        // Not a reply to a masqueraded flow (e.g. the host's own traffic): not ours.
        return Ok(pass(Counter::PassNoMatch));
    };
    touch(entry, ctx.len());
    let (addr, port) = unsafe { ((*entry).addr, (*entry).port) };

    rewrite_port(ctx, &pkt.l4, pkt.l4.dst_port_off, pkt.dst_port, port)?;
    rewrite_addr(ctx, &pkt.l4, IP_DST_OFF, pkt.dst_addr, addr)?;
    count(Counter::IngressTranslated);
    Ok(TC_ACT_OK)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
