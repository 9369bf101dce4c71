//! The uplink's IPv6 programs (tail-called by the IPv4 entry points for IPv6 frames): NAT66
//! masquerade of the containers' IPv6 subnets with the uplink's global address, for TCP, UDP
//! and ICMPv6 echo, with the same rules as IPv4: port preservation and classes, race-free
//! claims, TCP tracking, no direct access from outside, nothing leaving with a container's
//! address untranslated.
//!
//! Translated replies are handed to the container's port (`bpf_redirect_peer`) or bridge
//! (`bpf_redirect_neigh`) directly, with the hop limit decremented as a router would.
//! Neighbour discovery and everything that is not a flow of ours passes untouched.

use aya_ebpf::programs::TcContext;
use bpfnat_common::{
    wire::{
        opens_connection, valid_tcp_flags, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, TCP_RST, TCP_SYN,
    },
    Counter, FlowKey6, FragKey6, NatEntry6, BRIDGE_INTERNAL, BRIDGE_NO_MASQUERADE,
    HOOK_UPLINK_EGRESS, HOOK_UPLINK_INGRESS, IPPROTO_ICMPV6, IPPROTO_TCP, NAT_FLAG_PUBLISHED,
};

use crate::{
    csum::{rewrite_addr6, rewrite_port_stored},
    frag, fwd, host, icmp6,
    ipv6::{packet_slot, parse6, segment6, Packet6, IP6_DST_OFF, IP6_SRC_OFF},
    maps::{NAT6_IN, NAT6_OUT},
    nat::{reopen_if_closed, touch, track_tcp},
    nat6::{create_mapping6, create_published_mapping6, published6, settings6, state, Settings6},
    stats::{account, count},
    verdict::{pass, NEXT},
};

/// Uplink egress, IPv6: masquerade the source of packets from the containers' subnets.
#[inline(always)]
pub fn try_egress6(ctx: &TcContext) -> Result<i32, Counter> {
    count(Counter::EgressPackets);
    let pkt = packet_slot()?;
    if let Some(reason) = parse6(ctx, pkt)? {
        account(HOOK_UPLINK_EGRESS, pkt.proto, ctx.len());
        // Only what a container sends is ours, once the loader has told the datapath its
        // IPv6 address.
        if settings6().is_none() || !fwd::is_masqueraded6(pkt.src_addr) {
            return Ok(pass(reason));
        }
        // A container's ICMPv6 error about a flow of ours leaves translated.
        if pkt.inner_off != 0 && icmp6::translate_outbound6(ctx, pkt)? {
            return Ok(NEXT);
        }
        // A later fragment of a datagram whose first fragment was translated: the same
        // address.
        if reason == Counter::PassFragment && follow_fragment6(ctx, pkt, frag::OUTBOUND)? {
            return Ok(NEXT);
        }
        // Nothing leaves with a container's address: a fragment of no datagram we know, an
        // ICMPv6 message that is neither echo nor an error about a flow of ours.
        return Err(if reason == Counter::PassFragment {
            Counter::DropFragmentUnknown
        } else {
            Counter::DropUntranslatable
        });
    }
    pkt.flow = pkt.key();
    let pkt: &Packet6 = pkt;
    account(HOOK_UPLINK_EGRESS, pkt.proto, ctx.len());
    let Some(cfg) = settings6() else {
        return Ok(pass(Counter::PassNoMatch));
    };
    if pkt.proto == IPPROTO_ICMPV6 && pkt.icmp_type != ICMPV6_ECHO_REQUEST {
        // An echo reply has no mapping to leave by.
        if fwd::is_masqueraded6(pkt.src_addr) {
            return Err(Counter::DropUntranslatable);
        }
        return Ok(pass(Counter::PassUnsupportedProto));
    }
    let key = &pkt.flow;
    let entry = match NAT6_OUT.get_ptr_mut(key) {
        Some(entry) => entry,
        None => {
            if !open_flow6(ctx, pkt, key, &cfg)? {
                return Ok(pass(Counter::PassNoMatch));
            }
            NAT6_OUT.get_ptr_mut(key).ok_or(Counter::DropTableFull)?
        }
    };
    apply6(ctx, true, pkt, key, entry)?;
    Ok(NEXT)
}

/// A new outbound flow: create its mapping if it is ours (`Ok(false)`: the host's own, or a
/// network with masquerade off, passed). A BPF subprogram of its own: the port search's state
/// would not fit on the egress program's stack beside the packet's.
#[inline(never)]
fn open_flow6(
    ctx: &TcContext,
    pkt: &Packet6,
    key: &FlowKey6,
    cfg: &Settings6,
) -> Result<bool, Counter> {
    match fwd::bridge_of6(pkt.src_addr) {
        Some(bridge) => {
            let flags = fwd::bridge_flags(bridge);
            if flags & BRIDGE_INTERNAL != 0 {
                return Err(Counter::DropInternal);
            }
            if flags & BRIDGE_NO_MASQUERADE != 0 {
                count(Counter::PassNotMasqueraded);
                return Ok(false);
            }
        }
        // The host's own flow, unless a mapping holds its reply tuple (then it gets
        // another port, as for IPv4).
        None if pkt.src_addr == cfg.external && NAT6_IN.get_ptr(key.reversed()).is_some() => {
            count(Counter::HostFlowsRemapped);
        }
        None => return Ok(false),
    }
    if pkt.proto == IPPROTO_TCP && !valid_tcp_flags(pkt.tcp_flags) {
        return Err(Counter::DropInvalidTcp);
    }
    create_mapping6(ctx, key, cfg)?;
    Ok(true)
}

/// Uplink ingress, IPv6: replies of masqueraded flows back to their container's address.
#[inline(always)]
pub fn try_ingress6(ctx: &TcContext) -> Result<i32, Counter> {
    count(Counter::IngressPackets);
    let pkt = packet_slot()?;
    if let Some(reason) = parse6(ctx, pkt)? {
        let dst_addr = pkt.dst_addr;
        account(HOOK_UPLINK_INGRESS, pkt.proto, ctx.len());
        let Some(cfg) = settings6() else {
            return Ok(pass(reason));
        };
        if cfg.external == dst_addr {
            // A later fragment of a reply whose first fragment was translated.
            if reason == Counter::PassFragment && follow_fragment6(ctx, pkt, frag::INBOUND)? {
                return Ok(NEXT);
            }
            // An ICMPv6 error about a flow of ours goes to its container (packet too
            // big, unreachable, time exceeded).
            if pkt.inner_off != 0 && icmp6::translate_inbound6(ctx, pkt)? {
                return Ok(NEXT);
            }
        } else if fwd::is_masqueraded6(dst_addr) {
            // Nothing reaches a container from outside directly.
            return Err(Counter::DropDirectAccess);
        }
        return Ok(pass(reason));
    }
    pkt.flow = pkt.key();
    let pkt: &Packet6 = pkt;
    account(HOOK_UPLINK_INGRESS, pkt.proto, ctx.len());
    let Some(cfg) = settings6() else {
        return Ok(pass(Counter::PassNoMatch));
    };
    if pkt.dst_addr != cfg.external {
        if fwd::refused_from_outside(fwd::bridge_of6(pkt.dst_addr), pkt.proto, pkt.tcp_flags) {
            return Err(Counter::DropDirectAccess);
        }
        return Ok(pass(Counter::PassNoMatch));
    }
    if pkt.proto == IPPROTO_ICMPV6 && pkt.icmp_type != ICMPV6_ECHO_REPLY {
        return Ok(pass(Counter::PassUnsupportedProto));
    }
    let key = &pkt.flow;
    let entry = match NAT6_IN.get_ptr_mut(key) {
        Some(entry) => entry,
        None => match published6(pkt.proto, pkt.dst_port) {
            // A new connection to a published port (not ICMPv6: it has no ports).
            Some(target) if pkt.proto != IPPROTO_ICMPV6 => {
                // Only a SYN opens a TCP connection from outside.
                if pkt.proto == IPPROTO_TCP && !opens_connection(pkt.tcp_flags) {
                    return Err(if valid_tcp_flags(pkt.tcp_flags) {
                        Counter::DropStrayTcp
                    } else {
                        Counter::DropInvalidTcp
                    });
                }
                create_published_mapping6(key, &target, &cfg)?;
                NAT6_IN.get_ptr_mut(key).ok_or(Counter::DropTableFull)?
            }
            _ => {
                if is_stray_tcp6(ctx, pkt) {
                    return Err(Counter::DropStrayTcp);
                }
                return Ok(pass(Counter::PassNoMatch));
            }
        },
    };
    apply6(ctx, false, pkt, key, entry)?;
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let addr = unsafe { (*entry).addr };
    // Straight to the container (its port, or its bridge), past the host's forwarding.
    fwd::to_container6(ctx, addr)
}

/// The datagram a fragment belongs to, as the fragment table keys it.
#[inline(always)]
fn fragment_key(pkt: &Packet6, direction: u8) -> FragKey6 {
    FragKey6 {
        src_addr: pkt.src_addr,
        dst_addr: pkt.dst_addr,
        id: pkt.frag_id,
        proto: pkt.proto,
        direction,
        pad: 0,
    }
}

/// A later fragment (no L4 header) of a datagram whose first fragment was translated: the
/// same address, written with no checksum to fix (IPv6 has no header checksum, and the L4
/// checksum is in the first fragment). `Ok(false)`: its first fragment was not seen.
#[inline(never)]
fn follow_fragment6(ctx: &TcContext, pkt: &Packet6, direction: u8) -> Result<bool, Counter> {
    let Some(addr) = frag::lookup6(&fragment_key(pkt, direction)) else {
        return Ok(false);
    };
    let off = if direction == frag::OUTBOUND {
        IP6_SRC_OFF
    } else {
        IP6_DST_OFF
    };
    ctx.store(off, &addr, 0)
        .map_err(|_| Counter::DropRewriteFailed)?;
    count(Counter::FragmentsTranslated);
    Ok(true)
}

/// A packet of mapping `entry` (`egress`: found in `NAT6_OUT`, else in `NAT6_IN`): count
/// it, follow the TCP state on both halves, rewrite the address and the port. A BPF
/// subprogram of its own, for the stack's sake.
#[inline(never)]
fn apply6(
    ctx: &TcContext,
    egress: bool,
    pkt: &Packet6,
    key: &FlowKey6,
    entry: *mut NatEntry6,
) -> Result<(), Counter> {
    if pkt.proto == IPPROTO_TCP && !valid_tcp_flags(pkt.tcp_flags) {
        return Err(Counter::DropInvalidTcp);
    }
    let half = state(entry);
    touch(half, ctx.len());
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (addr, port) = unsafe { ((*entry).addr, (*entry).entry.port) };
    if pkt.proto == IPPROTO_TCP {
        // SAFETY: as above.
        let other = unsafe {
            if egress {
                key.reply_key(&*entry)
            } else {
                key.original_key(&*entry)
            }
        };
        let peer = || {
            let table = if egress { &NAT6_IN } else { &NAT6_OUT };
            table.get_ptr_mut(other).map(state)
        };
        // SAFETY: as above.
        let opener = egress || (unsafe { (*entry).entry.flags } & NAT_FLAG_PUBLISHED) != 0;
        if opener {
            reopen_if_closed(half, pkt.tcp_flags, peer);
        }
        track_tcp(half, &segment6(ctx, pkt), peer)?;
    }
    let (port_off, old_port, addr_off, old_addr) = if egress {
        (pkt.l4.src_port_off, pkt.src_port, IP6_SRC_OFF, pkt.src_addr)
    } else {
        (pkt.l4.dst_port_off, pkt.dst_port, IP6_DST_OFF, pkt.dst_addr)
    };
    rewrite_port_stored(ctx, &pkt.l4, port_off, old_port, port)?;
    rewrite_addr6(ctx, &pkt.l4, addr_off, old_addr, addr)?;
    if pkt.first_fragment {
        let direction = if egress {
            frag::OUTBOUND
        } else {
            frag::INBOUND
        };
        frag::remember6(&fragment_key(pkt, direction), addr);
    }
    count(if egress {
        Counter::EgressTranslated
    } else {
        Counter::IngressTranslated
    });
    Ok(())
}

/// A mid-stream TCP segment for the uplink address that no mapping and no local socket
/// claims (see `uplink::is_stray_tcp`). A BPF subprogram of its own: the socket lookup's
/// 128-bit tuple stays off the ingress program's stack.
#[inline(never)]
fn is_stray_tcp6(ctx: &TcContext, pkt: &Packet6) -> bool {
    pkt.proto == IPPROTO_TCP
        && pkt.tcp_flags & (TCP_SYN | TCP_RST) == 0
        && !host::has_socket6(
            ctx,
            pkt.proto,
            pkt.src_addr,
            pkt.dst_addr,
            pkt.src_port,
            pkt.dst_port,
        )
}
