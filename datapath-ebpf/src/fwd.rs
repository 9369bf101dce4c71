//! Forwarding in the datapath: packets are sent straight to their next device with
//! `bpf_redirect`/`bpf_redirect_neigh` instead of climbing the host's IP stack, so the host's
//! FORWARD chain (policy DROP on a Docker host, and br_netfilter for bridged frames) never
//! sees them. Routed packets get what the stack would have done: TTL decremented, MACs set.

use core::mem::MaybeUninit;

use aya_ebpf::btf_maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
    EbpfContext as _,
};
use bpfnat_common::{
    wire::{TCP_ACK, TCP_SYN},
    Counter, Endpoint, BRIDGE_INTERNAL, BRIDGE_NO_MASQUERADE, IPPROTO_TCP,
};

use crate::{
    csum::decrement_ttl,
    maps::{BRIDGES, ENDPOINTS, ENDPOINTS6, INTERNAL_NETS, INTERNAL_NETS6},
    parse::ptr_at,
    stats::count,
    verdict::NEXT,
};

const AF_INET: u8 = 2;

/// The bridge an address lives on, if it is in an internal subnet.
#[inline(always)]
pub fn bridge_of(addr: u32) -> Option<u32> {
    INTERNAL_NETS.get(&Key::new(32, addr)).copied()
}

/// Whether a packet from outside to `dst`'s bridge (`bridge_of(dst)`, either family), not a
/// reply to a mapping nor to a published port, is refused: always into a masqueraded (or
/// internal) network, which nothing reaches directly (Docker 28's direct-access protection);
/// into a routed one (masquerade off), only a new TCP connection, as Docker's FORWARD rules
/// accept established traffic only. One subnet lookup, one bridge lookup.
#[inline(always)]
pub fn refused_from_outside(bridge: Option<u32>, proto: u8, tcp_flags: u8) -> bool {
    let Some(bridge) = bridge else {
        return false;
    };
    bridge_flags(bridge) & BRIDGE_NO_MASQUERADE == 0
        || (proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
}

/// The bridge an IPv6 address lives on, if it is in a container subnet.
#[inline(always)]
pub fn bridge_of6(addr: [u32; 4]) -> Option<u32> {
    INTERNAL_NETS6.get(&Key::new(128, addr)).copied()
}

/// [`is_masqueraded`] for an IPv6 address.
#[inline(always)]
pub fn is_masqueraded6(addr: [u32; 4]) -> bool {
    match bridge_of6(addr) {
        Some(bridge) => bridge_flags(bridge) & BRIDGE_NO_MASQUERADE == 0,
        None => false,
    }
}

/// The `BRIDGE_*` flags of bridge `bridge` (an ifindex from [`bridge_of`]; 0 if unknown).
#[inline(always)]
pub fn bridge_flags(bridge: u32) -> u32 {
    match BRIDGES.get_ptr(bridge) {
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
        // whole program run (the verifier checks the lookup's result before any use).
        Some(info) => unsafe { (*info).flags },
        None => 0,
    }
}

/// Whether bridge `bridge` (an ifindex from [`bridge_of`]) is marked internal.
#[inline(always)]
pub fn is_internal_bridge(bridge: u32) -> bool {
    bridge_flags(bridge) & BRIDGE_INTERNAL != 0
}

/// Whether `addr` is a container's address that must never cross the uplink untranslated:
/// in a served subnet whose bridge masquerades (or is internal). The subnets of a bridge
/// with masquerade off are routed as they are.
#[inline(always)]
pub fn is_masqueraded(addr: u32) -> bool {
    match bridge_of(addr) {
        Some(bridge) => bridge_flags(bridge) & BRIDGE_NO_MASQUERADE == 0,
        None => false,
    }
}

/// Set the Ethernet addresses for the next hop, in packet memory.
#[inline(always)]
fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), Counter> {
    let Some(eth) = ptr_at::<[[u8; 6]; 2]>(ctx, 0) else {
        return Err(Counter::DropRewriteFailed);
    };
    // SAFETY: the pointers come from the bounds-checked accessor (`parse::ptr_at`), which
    // checked that every byte lies between data and data_end; unaligned access is allowed.
    unsafe { eth.write_unaligned([*dst, *src]) };
    Ok(())
}

/// Hand a frame to the container behind bridge port `port_ifindex`. Every caller runs on a
/// TC ingress hook, where `bpf_redirect_peer` (Linux 5.10) delivers the frame straight to the
/// ingress of the veth's other end, inside the container's namespace, skipping the host
/// side's transmit path and backlog queue. Bridge ports are veths on a container host.
#[inline(always)]
pub fn to_port(port_ifindex: u32) -> i32 {
    // SAFETY: a redirect helper given an ifindex and flags (null neighbour parameters are
    // allowed); it only records where the packet goes next.
    unsafe { bpf_redirect_peer(port_ifindex, 0) as i32 }
}

/// Send a routed packet (already translated) to container `dst` on its bridge: straight out
/// of its bridge port when the container is known, else through the bridge device with the
/// kernel resolving its MAC. Returns the TC action.
#[inline(always)]
pub fn to_container(ctx: &TcContext, dst: u32) -> Result<i32, Counter> {
    deliver(ctx, bridge_of(dst), decrement_ttl, || {
        ENDPOINTS.get_ptr(dst)
    })
}

/// The IPv6 hop limit, relative to the frame start.
const IP6_HOP_LIMIT_OFF: usize = crate::parse::ETH_HLEN + 7;
const AF_INET6: u8 = 10;

/// Decrement the IPv6 hop limit as a router does (no checksum in IPv6). `Ok(false)`: spent.
#[inline(always)]
fn decrement_hop_limit(ctx: &TcContext) -> Result<bool, Counter> {
    let Some(hop) = ptr_at::<u8>(ctx, IP6_HOP_LIMIT_OFF) else {
        return Err(Counter::DropRewriteFailed);
    };
    // SAFETY: the pointer comes from the bounds-checked accessor (`parse::ptr_at`).
    unsafe {
        if *hop <= 1 {
            return Ok(false);
        }
        *hop -= 1;
    }
    Ok(true)
}

/// [`to_container`] for IPv6.
#[inline(always)]
pub fn to_container6(ctx: &TcContext, dst: [u32; 4]) -> Result<i32, Counter> {
    deliver(ctx, bridge_of6(dst), decrement_hop_limit, || {
        ENDPOINTS6.get_ptr(dst)
    })
}

/// Both families' delivery to a container on `bridge` (from `bridge_of`): the TTL or hop
/// limit decremented (`decrement`), then its port when `endpoint` finds it, else its bridge.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    bridge: Option<u32>,
    decrement: impl Fn(&TcContext) -> Result<bool, Counter>,
    endpoint: impl FnOnce() -> Option<*const Endpoint>,
) -> Result<i32, Counter> {
    let Some(bridge) = bridge else {
        return Ok(NEXT);
    };
    if bridge == 0 {
        return Ok(NEXT); // no bridge configured for this subnet: let the stack route it
    }
    let Some(info) = BRIDGES.get_ptr(bridge) else {
        return Ok(NEXT);
    };
    if !decrement(ctx)? {
        // Its TTL runs out here. Left to the host, it would be answered with an ICMP
        // time-exceeded quoting it as translated, the container's address included.
        return Err(Counter::DropTtlExceeded);
    }
    count(Counter::Forwarded);
    if let Some(ep) = endpoint() {
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
        // whole program run (the verifier checks the lookup's result before any use).
        let ep: Endpoint = unsafe { *ep };
        // SAFETY: as above.
        let bridge_mac = unsafe { (*info).mac };
        set_macs(ctx, &ep.mac, &bridge_mac)?;
        return Ok(to_port(ep.port_ifindex));
    }
    // SAFETY: a redirect helper given an ifindex and flags (null neighbour parameters are
    // allowed); it only records where the packet goes next.
    Ok(unsafe { bpf_redirect_neigh(bridge, core::ptr::null_mut(), 0, 0) } as i32)
}

/// `slot` zeroed, as 4-byte stores. `mem::zeroed()` of this 64-byte struct compiles to a call
/// to a byte-by-byte `memset` subprogram: 64 loop iterations on every routed packet.
/// Volatile stores keep LLVM from turning these back into that call.
#[inline(always)]
fn zeroed_fib_params(slot: &mut MaybeUninit<bpf_fib_lookup>) -> &mut bpf_fib_lookup {
    const WORDS: usize = core::mem::size_of::<bpf_fib_lookup>() / 4;
    let words = slot.as_mut_ptr() as *mut u32;
    for i in 0..WORDS {
        // SAFETY: i < WORDS, inside the slot; the struct's alignment is 4.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte was written, and all zeroes is a valid bpf_fib_lookup.
    unsafe { slot.assume_init_mut() }
}

/// Send a packet from a container on `bridge` towards `uplink` if the routing table says
/// that is its way out. Returns `None` when the stack should decide (another interface, a
/// local address, no route).
#[inline(always)]
pub fn to_uplink(
    ctx: &TcContext,
    bridge: u32,
    uplink: u32,
    src: u32,
    dst: u32,
    proto: u8,
) -> Result<Option<i32>, Counter> {
    route_to_uplink(ctx, bridge, uplink, proto, decrement_ttl, |params| {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = src;
        params.__bindgen_anon_4.ipv4_dst = dst;
    })
}

/// [`to_uplink`] for IPv6: routed in BPF to the uplink's egress (where `nat_egress6`
/// masquerades it).
#[inline(always)]
pub fn to_uplink6(
    ctx: &TcContext,
    bridge: u32,
    uplink: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
    proto: u8,
) -> Result<Option<i32>, Counter> {
    route_to_uplink(ctx, bridge, uplink, proto, decrement_hop_limit, |params| {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = *src;
        params.__bindgen_anon_4.ipv6_dst = *dst;
    })
}

/// Both families' fast path to the uplink: a FIB lookup from the bridge (`addresses` fills
/// in the family and the addresses), and if the route leaves through the uplink, what the
/// router would do (`decrement`: the TTL or the hop limit; MACs from the FIB result, or
/// `bpf_redirect_neigh` when the neighbour is not resolved yet) and a redirect there.
#[inline(always)]
fn route_to_uplink(
    ctx: &TcContext,
    bridge: u32,
    uplink: u32,
    proto: u8,
    decrement: impl Fn(&TcContext) -> Result<bool, Counter>,
    addresses: impl FnOnce(&mut bpf_fib_lookup),
) -> Result<Option<i32>, Counter> {
    let mut slot = MaybeUninit::<bpf_fib_lookup>::uninit();
    let params = zeroed_fib_params(&mut slot);
    params.l4_protocol = proto;
    // tot_len 0: let the helper check the packet itself against the MTU, which knows GSO
    // packets (a TSO burst from a container is larger than the MTU and legitimate); a
    // non-zero tot_len would be compared as is and refuse every GSO packet.
    params.__bindgen_anon_1.tot_len = 0;
    params.ifindex = bridge;
    addresses(params);
    // SAFETY: the context is this program's skb, and `params` a live, exclusive bpf_fib_lookup
    // of exactly the size given.
    let ret = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            params as *mut bpf_fib_lookup,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if params.ifindex != uplink {
        return Ok(None);
    }
    if ret == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if !decrement(ctx)? {
            return Ok(None);
        }
        set_macs(ctx, &params.dmac, &params.smac)?;
        count(Counter::Forwarded);
        // SAFETY: a redirect helper given an ifindex and flags (null neighbour parameters are
        // allowed); it only records where the packet goes next.
        return Ok(Some(unsafe { bpf_redirect(uplink, 0) } as i32));
    }
    if ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        if !decrement(ctx)? {
            return Ok(None);
        }
        count(Counter::Forwarded);
        return Ok(Some(
            // SAFETY: a redirect helper given an ifindex and flags (null neighbour parameters
            // are allowed); it only records where the packet goes next.
            unsafe { bpf_redirect_neigh(uplink, core::ptr::null_mut(), 0, 0) } as i32,
        ));
    }
    Ok(None)
}
