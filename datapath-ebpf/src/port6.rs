//! The bridge-port program's IPv6 part (tail-called by `port_ingress` for IPv6 frames):
//! Docker's bridge policy and the source checks, as [`crate::port`] applies them to IPv4.
//!
//! - A container sends only from its own IPv6 addresses: those the loader read on its end of
//!   the veth (`ENDPOINTS6` with `ENDPOINT_ASSIGNED`, the port in `ASSIGNED_PORTS6`), or,
//!   where it found none, those learned first come first served; always inside its bridge's
//!   IPv6 subnets, never the gateway's, never another port's. A neighbour advertisement may claim only such
//!   an address as its target, so a container cannot poison its neighbours' caches.
//! - Same bridge: dropped with inter-container traffic off (`drop_icc`); another served
//!   bridge: dropped (`drop_isolation`); an internal bridge reaches its gateway and its own
//!   subnet only (`drop_internal`).
//! - Link-local and multicast traffic (neighbour discovery, router solicitations) stays on
//!   the bridge, where the kernel bridge's port isolation applies to it.
//!
//! A packet for the outside is routed in BPF to the uplink (`bpf_fib_lookup` with
//! `AF_INET6`), past the bridge and the host's forwarding; a TCP or UDP packet for the
//! gateway's or the uplink's IPv6 address takes the hairpin path (a published port reached
//! through the host's address, as [`crate::port`] does for IPv4); the rest goes on through
//! the bridge.

use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use bpfnat_common::{
    Counter, Endpoint, BRIDGE_ICC_OFF, BRIDGE_INTERNAL, HOOK_PORT_INGRESS, IPPROTO_ICMPV6,
};

use crate::{
    fwd::{bridge_of6, to_container6, to_uplink6},
    hairpin,
    ipv6::{fixed_header, packet_slot, parse6, Packet6, IPV6_HLEN},
    maps::{ASSIGNED_PORTS6, BRIDGES, CONFIG, ENDPOINTS6, PORTS},
    nat6::published6,
    parse::{ptr_at, pull, ETH_HLEN},
    stats::{account, count},
    verdict::{NEXT, TAIL_CALL},
};

/// ICMPv6 neighbour advertisement; its target address follows the 8-byte header.
const ND_NEIGHBOR_ADVERT: u8 = 136;

#[inline(always)]
fn is_link_local(a: &[u32; 4]) -> bool {
    let b = a[0].to_ne_bytes();
    b[0] == 0xfe && b[1] & 0xc0 == 0x80
}

#[inline(always)]
fn is_multicast(a: &[u32; 4]) -> bool {
    a[0].to_ne_bytes()[0] == 0xff
}

/// Whether port `port_ifindex` (of `bridge`, gateway `gateway`) may send from `addr`,
/// learning it for the port where it is new.
#[inline(always)]
fn check_source6(
    port_ifindex: u32,
    bridge: u32,
    gateway: &[u32; 4],
    addr: &[u32; 4],
    mac: [u8; 6],
) -> Result<(), Counter> {
    if let Some(known) = ENDPOINTS6.get_ptr(addr) {
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for
        // the whole program run (the verifier checks the lookup's result before any use).
        let known = unsafe { *known };
        if known.port_ifindex == port_ifindex {
            return Ok(());
        }
        return Err(Counter::DropSpoofed);
    }
    if ASSIGNED_PORTS6.get_ptr(port_ifindex).is_some() {
        // The loader knows this port's IPv6 addresses (read on the container's end of its
        // veth, which a container cannot forge), and this is not one of them.
        return Err(Counter::DropSpoofed);
    }
    if addr == gateway || bridge_of6(*addr) != Some(bridge) {
        return Err(Counter::DropSpoofed);
    }
    let ep = Endpoint {
        port_ifindex,
        mac,
        flags: 0,
        pad: 0,
    };
    let _ = ENDPOINTS6.insert(addr, ep, BPF_ANY as u64);
    Ok(())
}

#[inline(always)]
pub fn try_port_ingress6(ctx: &TcContext) -> Result<i32, Counter> {
    count(Counter::PortPackets);
    // SAFETY: the context's skb pointer is valid for the whole program run.
    let port_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let Some(bridge) = PORTS.get_ptr(port_ifindex).map(|b| unsafe { *b }) else {
        return Ok(NEXT);
    };
    // SAFETY: as above.
    let Some(info) = BRIDGES.get_ptr(bridge).map(|i| unsafe { *i }) else {
        return Ok(NEXT);
    };
    let malformed = Counter::DropMalformed;
    // The fixed header linear: the fast path rewrites the MACs and the hop limit in place.
    pull(ctx, ETH_HLEN + IPV6_HLEN)?;
    let hdr = fixed_header(ctx).ok_or(malformed)?;
    // The Ethernet source address: the container's MAC.
    let src_mac = ptr_at::<[u8; 6]>(ctx, 6).ok_or(malformed)?;
    // SAFETY: both pointers come from the bounds-checked accessor (`parse::ptr_at`): the
    // source MAC and the fixed IPv6 header lie between data and data_end; unaligned reads are
    // allowed.
    let (version, next, src, dst, mac) = unsafe {
        (
            (*hdr).version_class_flow[0] >> 4,
            (*hdr).next_header,
            core::ptr::addr_of!((*hdr).src).read_unaligned(),
            core::ptr::addr_of!((*hdr).dst).read_unaligned(),
            src_mac.read_unaligned(),
        )
    };
    if version != 6 {
        return Err(malformed);
    }
    account(HOOK_PORT_INGRESS, next, ctx.len());
    // The unspecified source (duplicate address detection) and link-local sources stay on
    // the link: the kernel never forwards them.
    if src != [0; 4] && !is_link_local(&src) {
        check_source6(port_ifindex, bridge, &info.gateway6, &src, mac)?;
    }
    // A neighbour advertisement (no extension headers: ND's hop limit is 255 and it is
    // sent as is) claims its target: it must be the port's own.
    if next == IPPROTO_ICMPV6 {
        let icmp_off = ETH_HLEN + IPV6_HLEN;
        if ctx.load::<u8>(icmp_off).ok() == Some(ND_NEIGHBOR_ADVERT) {
            let target: [u32; 4] = ctx.load(icmp_off + 8).map_err(|_| malformed)?;
            if !is_link_local(&target) && !is_multicast(&target) {
                check_source6(port_ifindex, bridge, &info.gateway6, &target, mac)?;
            }
        }
    }
    if is_multicast(&dst) || is_link_local(&dst) {
        return Ok(NEXT);
    }
    // The configuration, read once: the uplink's IPv6 address here, its ifindex below.
    let cfg = CONFIG.get(0);
    let external = cfg.map_or([0; 4], |c| c.external_addr6);
    if dst == info.gateway6 || (external != [0; 4] && dst == external) {
        if info.flags & BRIDGE_INTERNAL != 0 {
            // An internal network reaches its gateway (the host's services on this bridge)
            // and nothing beyond: no published port, no uplink address.
            if dst == info.gateway6 {
                return Ok(NEXT);
            }
            return Err(Counter::DropInternal);
        }
        // To the host itself: a hairpin connection to a published port, or the host's own
        // services. The hairpin program decides, on a stack of its own (tail-called by the
        // entry point, `port_ingress6`).
        return Ok(TAIL_CALL);
    }
    match bridge_of6(dst) {
        Some(b) if b == bridge => {
            if info.flags & BRIDGE_ICC_OFF != 0 {
                return Err(Counter::DropIcc);
            }
            Ok(NEXT)
        }
        Some(_) => Err(Counter::DropIsolation),
        None => {
            if info.flags & BRIDGE_INTERNAL != 0 {
                return Err(Counter::DropInternal);
            }
            // The fast path: routed in BPF straight to the uplink, past the bridge and the
            // host's forwarding, when the routing table says that is the way out.
            let Some(cfg) = cfg.filter(|c| c.external_addr != 0) else {
                return Ok(NEXT);
            };
            match to_uplink6(ctx, bridge, cfg.uplink_ifindex, &src, &dst, next)? {
                Some(action) => Ok(action),
                None => Ok(NEXT),
            }
        }
    }
}

/// The hairpin program (tail-called for a frame to the host's own IPv6 address, the
/// gateway's or the uplink's, from a port of a bridge that is not internal): translated if it
/// belongs to a hairpin connection or starts one to a published port (TCP or UDP), else left
/// to the host's own services (ICMPv6 included).
#[inline(always)]
pub fn try_hairpin6(ctx: &TcContext) -> Result<i32, Counter> {
    let pkt = packet_slot()?;
    if parse6(ctx, pkt)?.is_some() || pkt.proto == IPPROTO_ICMPV6 {
        return Ok(NEXT);
    }
    let pkt: &Packet6 = pkt;
    let to = match hairpin::find6(pkt) {
        Some(entry) => hairpin::touch6(entry, pkt),
        None => {
            let external = CONFIG.get(0).map_or([0; 4], |c| c.external_addr6);
            if external == [0; 4] || pkt.dst_addr != external {
                return Ok(NEXT);
            }
            let Some(target) = published6(pkt.proto, pkt.dst_port) else {
                return Ok(NEXT);
            };
            // Sourced from the IPv6 gateway of the published container's bridge, so its
            // answer comes back to the host even when the asking container is on another
            // bridge.
            let Some(gateway) = bridge_of6(target.addr)
                .and_then(|b| BRIDGES.get_ptr(b))
                // SAFETY: a pointer from a successful map lookup is non-null, aligned and
                // valid for the whole program run (the verifier checks the lookup's result
                // before any use).
                .map(|i| unsafe { (*i).gateway6 })
            else {
                return Ok(NEXT);
            };
            if gateway == [0; 4] {
                // The bridge has no IPv6 address to answer to: nothing to source from.
                return Ok(NEXT);
            }
            hairpin::create6(ctx, pkt, &target, &gateway)?
        }
    };
    hairpin::rewrite6(ctx, pkt, &to)?;
    to_container6(ctx, to.dst_addr)
}
