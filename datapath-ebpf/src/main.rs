//! TC programs of the NAT datapath: the three entry points, the panic handler and the
//! license. Each entry point runs a `try_*` function in [`verdict::run`], which turns its
//! error into a counted drop and traces the packet. The logic lives in one module per
//! concern:
//!
//! - programs: [`uplink`] (egress and ingress of the uplink), [`port`] (the bridge ports),
//!   [`uplink6`] and [`port6`] (IPv6, tail-called from the IPv4 entry points);
//! - packets: [`parse`] (headers, the bounds-checked accessor), [`ipv6`] (IPv6 headers and
//!   extension headers), [`icmp6`] (ICMPv6 errors), [`csum`] (rewrites with
//!   checksum fix-ups), [`icmp`] (ICMP errors and their quoted packet), [`frag`] (later
//!   fragments follow the first);
//! - state: [`nat`] (mappings: creation, port search, TCP state), [`nat6`] (the same for
//!   IPv6), [`embryonic`] (early
//!   drop of unanswered connections from outside), [`hairpin`] (containers
//!   reaching a published port through the host's address), [`maps`];
//! - forwarding: [`fwd`] (subnets, bridges, redirects, FIB lookups);
//! - the host: [`host`] (its own sockets, whose ports containers must not take);
//! - observation: [`stats`] (counters, traffic), [`trace`] (per-packet events), [`verdict`].
#![no_std]
#![no_main]
// For `atomic_xadd` (see nat::touch); this crate is built with nightly only.
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "core_intrinsics is an internal feature; nightly is required anyway"
)]

mod csum;
mod embryonic;
mod embryonic6;
mod frag;
mod fwd;
mod hairpin;
mod host;
mod icmp;
mod icmp6;
mod ipv6;
mod maps;
mod nat;
mod nat6;
mod parse;
mod port;
mod port6;
mod stats;
mod trace;
mod uplink;
mod uplink6;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use bpfnat_common::{
    names::{IPV6_EGRESS, IPV6_INGRESS, IPV6_PORT},
    HOOK_PORT_INGRESS, HOOK_UPLINK_EGRESS, HOOK_UPLINK_INGRESS,
};

/// Uplink egress: masquerade the source of packets from internal subnets (IPv6 frames go to
/// [`nat_egress6`]).
#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    ipv6::dispatch(&ctx, IPV6_EGRESS);
    verdict::run(&ctx, HOOK_UPLINK_EGRESS, uplink::try_egress)
}

/// Uplink ingress: send replies of masqueraded flows, and connections to published ports,
/// back to their container (IPv6 frames go to [`nat_ingress6`]).
#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    ipv6::dispatch(&ctx, IPV6_INGRESS);
    verdict::run(&ctx, HOOK_UPLINK_INGRESS, uplink::try_ingress)
}

/// Uplink egress, IPv6 (tail-called by [`nat_egress`]).
#[classifier]
pub fn nat_egress6(ctx: TcContext) -> i32 {
    verdict::run(&ctx, HOOK_UPLINK_EGRESS, uplink6::try_egress6)
}

/// Uplink ingress, IPv6 (tail-called by [`nat_ingress`]).
#[classifier]
pub fn nat_ingress6(ctx: TcContext) -> i32 {
    verdict::run(&ctx, HOOK_UPLINK_INGRESS, uplink6::try_ingress6)
}

/// Bridge ports (host side of each container's veth): learning, bridge policy, forwarding.
#[classifier]
pub fn port_ingress(ctx: TcContext) -> i32 {
    ipv6::dispatch(&ctx, IPV6_PORT);
    verdict::run(&ctx, HOOK_PORT_INGRESS, port::try_port_ingress)
}

/// Bridge ports, IPv6 (tail-called by [`port_ingress`]).
#[classifier]
pub fn port_ingress6(ctx: TcContext) -> i32 {
    let action = verdict::run(&ctx, HOOK_PORT_INGRESS, port6::try_port_ingress6);
    if action == verdict::TAIL_CALL {
        // For the host's own address: the hairpin program. It does not come back unless its
        // slot is empty (an old loader), and then the host has the packet.
        // SAFETY: a tail call from the entry point's frame; nothing on it is needed after.
        unsafe { ipv6::tail_call(&ctx, &maps::HAIRPIN6_PROG, 0) };
        return verdict::NEXT;
    }
    action
}

/// Bridge ports, IPv6, a packet for the host's own IPv6 address: hairpin (tail-called by
/// [`port_ingress6`]).
#[classifier]
pub fn port_hairpin6(ctx: TcContext) -> i32 {
    verdict::run(&ctx, HOOK_PORT_INGRESS, port6::try_hairpin6)
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
