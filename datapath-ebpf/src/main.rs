//! TC programs of the NAT datapath. Entry points are thin: each calls a `try_*` function and
//! turns its error into a counted drop. The logic lives in one module per concern:
//! `parse` (headers), `csum` (rewrites with checksum fix-ups), `nat` (mappings), `maps`,
//! `stats` (counters).
#![no_std]
#![no_main]
// For `atomic_xadd` (see nat::touch); this crate is built with nightly only.
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "core_intrinsics is an internal feature; nightly is required anyway"
)]

mod csum;
mod frag;
mod fwd;
mod hairpin;
mod icmp;
mod maps;
mod nat;
mod parse;
mod port;
mod stats;
mod trace;

use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_ns, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::classifier,
    programs::TcContext,
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use bpfnat_common::{
    Counter, FlowKey, HOOK_PORT_INGRESS, HOOK_UPLINK_EGRESS, HOOK_UPLINK_INGRESS, IPPROTO_ICMP,
    IPPROTO_TCP, NAT_FLAG_PUBLISHED, TRACE_NOT_DROPPED,
};

use crate::{
    csum::{rewrite_addr, rewrite_ip_addr, rewrite_port},
    maps::{LOG_RATE, NAT_IN, NAT_OUT},
    nat::{
        create_mapping, create_published_mapping, is_internal, published, reopen_if_closed,
        settings, touch, track_tcp,
    },
    parse::{parse, Packet, Parsed, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IP_DST_OFF, IP_SRC_OFF},
    stats::{account, count},
};

#[inline(always)]
fn pass(reason: Counter) -> i32 {
    count(reason);
    TC_ACT_OK
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
/// tracing is on (the only cost when off: one read of the trace filter).
#[inline(always)]
fn run(ctx: &TcContext, hook: u8, logic: impl Fn(&TcContext) -> Result<i32, Counter>) -> i32 {
    let Some(filter) = trace::filter() else {
        return match logic(ctx) {
            Ok(action) => action,
            Err(reason) => drop_packet(ctx, reason),
        };
    };
    let (before, _, _) = trace::tuple(ctx);
    let (action, reason) = match logic(ctx) {
        Ok(action) => (action, TRACE_NOT_DROPPED),
        Err(reason) => (drop_packet(ctx, reason), reason as u32),
    };
    trace::emit(ctx, &filter, hook, &before, action, reason);
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

/// Uplink egress: masquerade the source of packets from internal subnets.
#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    run(&ctx, HOOK_UPLINK_EGRESS, try_nat_egress)
}

#[inline(always)]
fn try_nat_egress(ctx: &TcContext) -> Result<i32, Counter> {
    count(Counter::EgressPackets);
    let parsed = parse(ctx)?;
    account(HOOK_UPLINK_EGRESS, parsed.proto(), ctx.len());
    let Some(cfg) = settings() else {
        return Ok(pass(Counter::PassNoMatch));
    };
    let pkt = match parsed {
        Parsed::Packet(pkt) => pkt,
        Parsed::Pass(reason) => return Ok(pass(reason)),
        Parsed::IcmpError(err) => {
            if is_internal(err.src_addr) && icmp::translate_outbound(ctx, &err)? {
                return Ok(TC_ACT_OK);
            }
            return Ok(pass(Counter::PassNoMatch));
        }
        Parsed::LaterFragment(f) => {
            if !is_internal(f.src_addr) {
                return Ok(pass(Counter::PassFragment));
            }
            // Unknown: forwarding it would leak the internal address.
            let addr = frag::lookup(&frag::key(
                f.src_addr,
                f.dst_addr,
                f.id,
                f.proto,
                frag::OUTBOUND,
            ))
            .ok_or(Counter::DropFragmentUnknown)?;
            rewrite_ip_addr(ctx, IP_SRC_OFF, f.src_addr, addr)?;
            count(Counter::FragmentsTranslated);
            return Ok(TC_ACT_OK);
        }
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
            // An internal network never leaves, even through the host's own forwarding
            // (before the loader has attached the port program to a new container's port).
            if fwd::is_on_internal_bridge(pkt.src_addr) {
                return Err(Counter::DropInternal);
            }
            create_mapping(&key, &cfg)?
        }
    };
    touch(entry, ctx.len());
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (addr, port) = unsafe { ((*entry).addr, (*entry).port) };
    if pkt.proto == IPPROTO_TCP {
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
        // whole program run (the verifier checks the lookup's result before any use).
        let reply = unsafe { key.reply_key(&*entry) };
        reopen_if_closed(entry, pkt.tcp_flags, &NAT_IN, &reply);
        track_tcp(entry, pkt.tcp_flags, &NAT_IN, &reply);
    }

    rewrite_port(ctx, &pkt.l4, pkt.l4.src_port_off, pkt.src_port, port)?;
    rewrite_addr(ctx, &pkt.l4, IP_SRC_OFF, pkt.src_addr, addr)?;
    if pkt.first_fragment {
        frag::remember(
            &frag::key(
                pkt.src_addr,
                pkt.dst_addr,
                pkt.ip_id,
                pkt.proto,
                frag::OUTBOUND,
            ),
            addr,
        );
    }
    count(Counter::EgressTranslated);
    Ok(TC_ACT_OK)
}

/// Uplink ingress: send replies of masqueraded flows back to their internal address.
#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    run(&ctx, HOOK_UPLINK_INGRESS, try_nat_ingress)
}

#[inline(always)]
fn try_nat_ingress(ctx: &TcContext) -> Result<i32, Counter> {
    count(Counter::IngressPackets);
    let parsed = parse(ctx)?;
    account(HOOK_UPLINK_INGRESS, parsed.proto(), ctx.len());
    let Some(cfg) = settings() else {
        return Ok(pass(Counter::PassNoMatch));
    };
    let pkt = match parsed {
        Parsed::Packet(pkt) => pkt,
        Parsed::Pass(reason) => return Ok(pass(reason)),
        Parsed::IcmpError(err) => {
            if err.dst_addr == cfg.external_addr {
                if let Some(addr) = icmp::translate_inbound(ctx, &err)? {
                    return fwd::to_container(ctx, addr);
                }
            }
            if is_internal(err.dst_addr) {
                return Err(Counter::DropDirectAccess);
            }
            return Ok(pass(Counter::PassNoMatch));
        }
        Parsed::LaterFragment(f) => {
            if f.dst_addr != cfg.external_addr {
                if is_internal(f.dst_addr) {
                    return Err(Counter::DropDirectAccess);
                }
                return Ok(pass(Counter::PassFragment));
            }
            // Unknown fragments to the uplink address may be the host's own: let it have them.
            let Some(addr) = frag::lookup(&frag::key(
                f.src_addr,
                f.dst_addr,
                f.id,
                f.proto,
                frag::INBOUND,
            )) else {
                return Ok(pass(Counter::PassFragment));
            };
            rewrite_ip_addr(ctx, IP_DST_OFF, f.dst_addr, addr)?;
            count(Counter::FragmentsTranslated);
            return fwd::to_container(ctx, addr);
        }
    };
    if pkt.dst_addr != cfg.external_addr {
        // Docker 28's direct-access protection: nothing reaches a container from outside
        // except replies and published ports, even when the outside has a route to it.
        if is_internal(pkt.dst_addr) {
            return Err(Counter::DropDirectAccess);
        }
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
    let entry = match NAT_IN.get_ptr_mut(key) {
        Some(entry) => entry,
        None => match published(pkt.proto, pkt.dst_addr, pkt.dst_port) {
            // A new connection to a published port (TCP/UDP only: ICMP has no ports).
            Some(target) if pkt.proto != IPPROTO_ICMP => create_published_mapping(&key, &target)?,
            _ => {
                if is_stray_tcp(ctx, &pkt) {
                    return Err(Counter::DropStrayTcp);
                }
                // Not a reply to a masqueraded flow (e.g. the host's own traffic): not ours.
                return Ok(pass(Counter::PassNoMatch));
            }
        },
    };
    touch(entry, ctx.len());
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (addr, port) = unsafe { ((*entry).addr, (*entry).port) };
    if pkt.proto == IPPROTO_TCP {
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
        // whole program run (the verifier checks the lookup's result before any use).
        let original = unsafe { key.original_key(&*entry) };
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
        // whole program run (the verifier checks the lookup's result before any use).
        if unsafe { (*entry).flags } & NAT_FLAG_PUBLISHED != 0 {
            // For a published connection the client opens: its half is this one.
            reopen_if_closed(entry, pkt.tcp_flags, &NAT_OUT, &original);
        }
        track_tcp(entry, pkt.tcp_flags, &NAT_OUT, &original);
    }

    rewrite_port(ctx, &pkt.l4, pkt.l4.dst_port_off, pkt.dst_port, port)?;
    rewrite_addr(ctx, &pkt.l4, IP_DST_OFF, pkt.dst_addr, addr)?;
    if pkt.first_fragment {
        frag::remember(
            &frag::key(
                pkt.src_addr,
                pkt.dst_addr,
                pkt.ip_id,
                pkt.proto,
                frag::INBOUND,
            ),
            addr,
        );
    }
    count(Counter::IngressTranslated);
    fwd::to_container(ctx, addr)
}

/// Bridge ports (host side of each container's veth): learning, bridge policy, forwarding.
#[classifier]
pub fn port_ingress(ctx: TcContext) -> i32 {
    run(&ctx, HOOK_PORT_INGRESS, port::try_port_ingress)
}

/// A mid-stream TCP segment (no SYN, no RST) for the uplink address that no mapping and no
/// local socket claims. Passing it would make the host answer with a RST and kill a
/// connection whose mapping was just flushed or expired and is about to be picked up again
/// by its next outbound segment; dropping it lets the peer retransmit instead.
#[inline(always)]
fn is_stray_tcp(ctx: &TcContext, pkt: &Packet) -> bool {
    const SYN_OR_RST: u8 = 0x02 | 0x04;
    if pkt.proto != IPPROTO_TCP || pkt.tcp_flags & SYN_OR_RST != 0 {
        return false;
    }
    // SAFETY: bpf_sock_tuple is plain data (integers in unions), valid when zeroed.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = pkt.src_addr;
    tuple.__bindgen_anon_1.ipv4.daddr = pkt.dst_addr;
    tuple.__bindgen_anon_1.ipv4.sport = pkt.src_port;
    tuple.__bindgen_anon_1.ipv4.dport = pkt.dst_port;
    // The IPv4 part of the tuple: two addresses and two ports.
    const IPV4_TUPLE_LEN: u32 = 12;
    // SAFETY: the context is this program's skb and `tuple` a live stack value of the length
    // given; the returned socket, if any, is released below.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            IPV4_TUPLE_LEN,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return true;
    }
    // SAFETY: `sk` is the non-null socket bpf_skc_lookup_tcp returned, released exactly once.
    unsafe { bpf_sk_release(sk as *mut _) };
    false
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
