//! The program on each bridge port (the host side of a container's veth): frames from one
//! container. It checks that a container sends only from its own address (learning where
//! containers are when the loader has not told it), enforces the bridge's policy
//! (inter-container traffic, isolation between bridges, internal networks) and forwards what
//! it can itself.

use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use bpfnat_common::{
    wire::{ETH_P_ARP, ETH_P_IP},
    Counter, Endpoint, BRIDGE_ICC_OFF, BRIDGE_INTERNAL, ENDPOINT_ASSIGNED, HOOK_PORT_INGRESS,
    IPPROTO_ICMP,
};

use crate::{
    fwd::{bridge_of, to_container, to_port, to_uplink},
    hairpin,
    maps::{ASSIGNED_PORTS, BRIDGES, ENDPOINTS, PORTS},
    nat::{published, settings},
    parse::{parse, pull, read_at, Parsed, ETH_HLEN, IPV4_MIN_HLEN, IP_DST_OFF, IP_SRC_OFF},
    stats::{account, count},
    verdict::NEXT,
};

/// ARP for IPv4 over Ethernet: sender MAC at 8, sender IP at 14 of the ARP header.
const ARP_SENDER_MAC_OFF: usize = ETH_HLEN + 8;
const ARP_SENDER_IP_OFF: usize = ETH_HLEN + 14;

/// Whether this port may send from `addr`, learning the address for it where that is how
/// its containers are known. A port whose addresses the loader assigned (read from the
/// container's own veth, which a container cannot forge) sends only from those; another port
/// owns what it was first seen with. Never an address outside the bridge's subnets, nor the
/// gateway's: a container must not draw traffic meant for the host or another bridge, nor
/// leave with an address that is not its own.
#[inline(always)]
fn check_source(
    port_ifindex: u32,
    bridge: u32,
    gateway: u32,
    addr: u32,
    mac: [u8; 6],
) -> Result<(), Counter> {
    if let Some(known) = ENDPOINTS.get_ptr(addr) {
        // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
        // whole program run (the verifier checks the lookup's result before any use).
        let known = unsafe { *known };
        if known.port_ifindex == port_ifindex {
            // The common case, every packet of a known container: nothing to check again
            // (the entry passed the checks below when it was written) and nothing to write.
            if known.mac == mac || known.flags & ENDPOINT_ASSIGNED != 0 {
                return Ok(());
            }
        } else {
            // Another port's container: assigned to it, or first seen there. A spoofed
            // source must not take its traffic over; the loader forgets a port's containers
            // when the port goes away, so a reused address is found again.
            return Err(Counter::DropSpoofed);
        }
    } else if ASSIGNED_PORTS.get_ptr(port_ifindex).is_some() {
        // The loader knows this port's addresses, and this is not one of them.
        return Err(Counter::DropSpoofed);
    }
    if addr == gateway || bridge_of(addr) != Some(bridge) {
        return Err(Counter::DropSpoofed);
    }
    let ep = Endpoint {
        port_ifindex,
        mac,
        flags: 0,
        pad: 0,
    };
    let _ = ENDPOINTS.insert(addr, ep, BPF_ANY as u64);
    Ok(())
}

#[inline(always)]
pub fn try_port_ingress(ctx: &TcContext) -> Result<i32, Counter> {
    count(Counter::PortPackets);
    // SAFETY: the context's skb pointer is valid for the whole program run.
    let port_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let Some(bridge) = PORTS.get_ptr(port_ifindex).map(|b| unsafe { *b }) else {
        return Ok(NEXT);
    };
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let Some(info) = BRIDGES.get_ptr(bridge).map(|i| unsafe { *i }) else {
        return Ok(NEXT);
    };
    // Headers are read in packet memory (a helper call per field costs more than the rest
    // of the program); make them linear first. Rewrites below re-derive their pointers.
    pull(ctx, ETH_HLEN + IPV4_MIN_HLEN)?;
    let malformed = Counter::DropMalformed;
    let eth: [u8; ETH_HLEN] = read_at(ctx, 0).ok_or(malformed)?;
    let ether_type = u16::from_be_bytes([eth[12], eth[13]]);
    let src_mac = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    if ether_type == ETH_P_ARP {
        if let (Ok(mac), Ok(ip)) = (
            ctx.load::<[u8; 6]>(ARP_SENDER_MAC_OFF),
            ctx.load::<u32>(ARP_SENDER_IP_OFF),
        ) {
            // A probe (sender 0.0.0.0) claims nothing; any other sender address must be the
            // port's own, or its ARP would poison the other containers' and the host's caches.
            if ip != 0 {
                check_source(port_ifindex, bridge, info.gateway, ip, mac)?;
            }
        }
        return Ok(NEXT);
    }
    if ether_type != ETH_P_IP {
        return Ok(NEXT);
    }
    let src: u32 = read_at(ctx, IP_SRC_OFF).ok_or(malformed)?;
    let dst: u32 = read_at(ctx, IP_DST_OFF).ok_or(malformed)?;
    let proto: u8 = read_at(ctx, ETH_HLEN + 9).ok_or(malformed)?;
    account(HOOK_PORT_INGRESS, proto, ctx.len());
    if src == 0 {
        // No address yet (DHCP): the kernel's to handle, never forwarded here.
        return Ok(NEXT);
    }
    check_source(port_ifindex, bridge, info.gateway, src, src_mac)?;

    let cfg = settings();
    let external = cfg.map_or(0, |c| c.external_addr);
    if dst == info.gateway || (external != 0 && dst == external) {
        if info.flags & BRIDGE_INTERNAL != 0 {
            // An internal network reaches its gateway (the host's services on this bridge)
            // and nothing beyond: no published port, no uplink address.
            if dst == info.gateway {
                return Ok(NEXT);
            }
            return Err(Counter::DropInternal);
        }
        // To the host itself: a hairpin connection to a published port, or the host's own
        // services.
        return hairpin_path(ctx, external);
    }

    match bridge_of(dst) {
        // Same bridge: a bridged frame; deliver it to the container's port directly so the
        // bridge (and br_netfilter's FORWARD) never see it.
        Some(b) if b == bridge => {
            if info.flags & BRIDGE_ICC_OFF != 0 {
                return Err(Counter::DropIcc);
            }
            if let Some(ep) = ENDPOINTS.get_ptr(dst) {
                count(Counter::Forwarded);
                // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid
                // for the whole program run (the verifier checks the lookup's result before any
                // use).
                return Ok(to_port(unsafe { (*ep).port_ifindex }));
            }
            Ok(NEXT)
        }
        // Another bridge of ours: isolated (published ports go through the host address).
        Some(_) => Err(Counter::DropIsolation),
        None => {
            if dst == info.gateway {
                return Ok(NEXT); // the host itself
            }
            if info.flags & BRIDGE_INTERNAL != 0 {
                return Err(Counter::DropInternal);
            }
            let Some(cfg) = cfg else {
                return Ok(NEXT);
            };
            match to_uplink(ctx, bridge, cfg.uplink_ifindex, src, dst, proto)? {
                Some(action) => Ok(action),
                None => Ok(NEXT),
            }
        }
    }
}

/// A frame for the host's own address (the gateway or the uplink address): translate it if it
/// belongs to a hairpin connection, or starts one to a published port; else it is for the
/// host's own services.
#[inline(always)]
fn hairpin_path(ctx: &TcContext, external: u32) -> Result<i32, Counter> {
    let Parsed::Packet(pkt) = parse(ctx)? else {
        return Ok(NEXT);
    };
    if pkt.proto == IPPROTO_ICMP {
        return Ok(NEXT);
    }
    let to = match hairpin::find(&pkt) {
        Some(entry) => hairpin::touch(entry, &pkt),
        None => {
            if external == 0 || pkt.dst_addr != external {
                return Ok(NEXT);
            }
            let Some(target) = published(pkt.proto, pkt.dst_addr, pkt.dst_port) else {
                return Ok(NEXT);
            };
            // Sourced from the gateway of the published container's bridge, so its answer
            // comes back to the host even when the asking container is on another bridge.
            let Some(gateway) = bridge_of(target.addr)
                .and_then(|b| BRIDGES.get_ptr(b))
                // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid
                // for the whole program run (the verifier checks the lookup's result before any
                // use).
                .map(|i| unsafe { (*i).gateway })
            else {
                return Ok(NEXT);
            };
            hairpin::create(ctx, &pkt, &target, gateway)?
        }
    };
    hairpin::rewrite(ctx, &pkt, &to)?;
    to_container(ctx, to.dst_addr)
}
