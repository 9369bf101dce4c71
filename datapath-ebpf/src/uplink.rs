//! The uplink's two programs. On the way out (`egress`), a packet from a container's subnet
//! gets the uplink's address and a port of its mapping; on the way in (`ingress`), a reply or
//! a packet to a published port gets its container's address and port back and is handed to
//! the container. Each direction finds or creates the mapping its own way; what is done with
//! a mapping once found is one routine for both ([`apply`]), the way Cilium's
//! `snat_v4_process` serves both directions.

use aya_ebpf::programs::TcContext;
use bpfnat_common::{
    wire::{
        opens_connection, valid_tcp_flags, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, TCP_FIN, TCP_RST,
        TCP_SYN,
    },
    Counter, FlowKey, NatEntry, BRIDGE_INTERNAL, BRIDGE_NO_MASQUERADE, HOOK_UPLINK_EGRESS,
    HOOK_UPLINK_INGRESS, IPPROTO_ICMP, IPPROTO_TCP, NAT_FLAG_PUBLISHED,
};

use crate::{
    csum::{rewrite_addr, rewrite_ip_addr, rewrite_port},
    frag, fwd, host, icmp,
    maps::{NatTable, NAT_IN, NAT_OUT},
    nat::{
        create_mapping, create_published_mapping, published, reopen_if_closed, settings, touch,
        track_tcp, Segment,
    },
    parse::{
        parse, read_at, Fragment, Packet, Parsed, ETH_HLEN, IP_DST_OFF, IP_SRC_OFF, IP_TOT_LEN_OFF,
    },
    stats::{account, count},
    verdict::{pass, NEXT},
};

/// Which way a packet crosses the uplink. Every function taking one is inlined with a
/// constant, so the choices below cost nothing at run time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Leaving: the source is rewritten.
    Egress,
    /// Arriving: the destination is rewritten.
    Ingress,
}

impl Dir {
    #[inline(always)]
    fn hook(self) -> u8 {
        match self {
            Dir::Egress => HOOK_UPLINK_EGRESS,
            Dir::Ingress => HOOK_UPLINK_INGRESS,
        }
    }

    /// The table a packet of this direction is looked up in.
    #[inline(always)]
    fn table(self) -> &'static NatTable {
        match self {
            Dir::Egress => &NAT_OUT,
            Dir::Ingress => &NAT_IN,
        }
    }

    /// The table holding the mapping's other half.
    #[inline(always)]
    fn other_table(self) -> &'static NatTable {
        match self {
            Dir::Egress => &NAT_IN,
            Dir::Ingress => &NAT_OUT,
        }
    }

    #[inline(always)]
    fn frag_direction(self) -> u8 {
        match self {
            Dir::Egress => frag::OUTBOUND,
            Dir::Ingress => frag::INBOUND,
        }
    }

    /// Offset, old value of the address this direction rewrites.
    #[inline(always)]
    fn rewritten_addr(self, src_addr: u32, dst_addr: u32) -> (usize, u32) {
        match self {
            Dir::Egress => (IP_SRC_OFF, src_addr),
            Dir::Ingress => (IP_DST_OFF, dst_addr),
        }
    }
}

/// A packet of mapping `entry` (found in, or just added to, `dir`'s table): count it, follow
/// the TCP state on both halves, rewrite the address and the port, and let a first fragment's
/// later fragments follow. Returns the address written.
#[inline(always)]
fn apply(
    ctx: &TcContext,
    dir: Dir,
    pkt: &Packet,
    key: &FlowKey,
    entry: *mut NatEntry,
) -> Result<u32, Counter> {
    // A segment no TCP sends is neither tracked nor translated (nf_conntrack marks it
    // invalid): it would keep the mapping alive and move its state for nothing.
    if pkt.proto == IPPROTO_TCP && !valid_tcp_flags(pkt.tcp_flags) {
        return Err(Counter::DropInvalidTcp);
    }
    touch(entry, ctx.len());
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use).
    let (addr, port) = unsafe { ((*entry).addr, (*entry).port) };
    if pkt.proto == IPPROTO_TCP {
        // SAFETY: as above.
        let other = unsafe {
            match dir {
                Dir::Egress => key.reply_key(&*entry),
                Dir::Ingress => key.original_key(&*entry),
            }
        };
        // The half of the side that opens the connection: a masqueraded flow's outbound
        // one, a published connection's inbound one. A new SYN there reopens a closed mapping.
        let opener = match dir {
            Dir::Egress => true,
            // SAFETY: as above.
            Dir::Ingress => (unsafe { (*entry).flags } & NAT_FLAG_PUBLISHED) != 0,
        };
        #[allow(
            clippy::needless_borrows_for_generic_args,
            reason = "by value, the key takes another 16 bytes of a stack that has none left"
        )]
        let peer = || dir.other_table().get_ptr_mut(&other);
        if opener {
            reopen_if_closed(entry, pkt.tcp_flags, peer);
        }
        track_tcp(entry, &segment(ctx, pkt), peer)?;
    }
    let (port_off, old_port) = match dir {
        Dir::Egress => (pkt.l4.src_port_off, pkt.src_port),
        Dir::Ingress => (pkt.l4.dst_port_off, pkt.dst_port),
    };
    let (addr_off, old_addr) = dir.rewritten_addr(pkt.src_addr, pkt.dst_addr);
    rewrite_port(ctx, &pkt.l4, port_off, old_port, port)?;
    rewrite_addr(ctx, &pkt.l4, addr_off, old_addr, addr)?;
    if pkt.first_fragment {
        let datagram = frag::key(
            pkt.src_addr,
            pkt.dst_addr,
            pkt.ip_id,
            pkt.proto,
            dir.frag_direction(),
        );
        frag::remember(&datagram, addr);
    }
    count(match dir {
        Dir::Egress => Counter::EgressTranslated,
        Dir::Ingress => Counter::IngressTranslated,
    });
    Ok(addr)
}

/// The sequence numbers of TCP segment `pkt`, read in packet memory (its fixed header and the
/// IP header are linear, `parse` made them so). The payload's length comes from the IP
/// header's total length (also right for GSO and GRO packets), or from the packet's when
/// that is 0 (a BIG TCP packet).
#[inline(always)]
fn segment(ctx: &TcContext, pkt: &Packet) -> Segment {
    let l4 = pkt.l4.src_port_off;
    let seq = read_at::<u32>(ctx, l4 + 4).map_or(0, u32::from_be);
    let ack = read_at::<u32>(ctx, l4 + 8).map_or(0, u32::from_be);
    let doff = read_at::<u8>(ctx, l4 + 12).map_or(0, |b| (b >> 4) as u32 * 4);
    let ip_len = read_at::<u16>(ctx, IP_TOT_LEN_OFF).map_or(0, u16::from_be) as u32;
    let headers = (l4 - ETH_HLEN) as u32 + doff;
    let total = if ip_len != 0 {
        ip_len
    } else {
        ctx.len().saturating_sub(ETH_HLEN as u32)
    };
    let mut end = seq.wrapping_add(total.saturating_sub(headers));
    if pkt.tcp_flags & TCP_SYN != 0 {
        end = end.wrapping_add(1);
    }
    if pkt.tcp_flags & TCP_FIN != 0 {
        end = end.wrapping_add(1);
    }
    Segment {
        flags: pkt.tcp_flags,
        seq,
        ack,
        end,
    }
}

/// A later fragment (no ports) of a datagram whose first fragment was translated: the same
/// address. `None` when the first fragment was not seen.
#[inline(always)]
fn follow_fragment(ctx: &TcContext, dir: Dir, f: &Fragment) -> Result<Option<u32>, Counter> {
    let datagram = frag::key(f.src_addr, f.dst_addr, f.id, f.proto, dir.frag_direction());
    let Some(addr) = frag::lookup(&datagram) else {
        return Ok(None);
    };
    let (offset, old) = dir.rewritten_addr(f.src_addr, f.dst_addr);
    rewrite_ip_addr(ctx, offset, old, addr)?;
    count(Counter::FragmentsTranslated);
    Ok(Some(addr))
}

/// Uplink egress: masquerade the source of packets from the containers' subnets.
#[inline(always)]
pub fn try_egress(ctx: &TcContext) -> Result<i32, Counter> {
    const DIR: Dir = Dir::Egress;
    count(Counter::EgressPackets);
    // A flow's packet is taken out of the parse result before any helper call: the compiler
    // would otherwise carry its (undefined) fields through the other variants' paths in
    // registers a call has clobbered, which the verifier refuses.
    let pkt = match parse(ctx)? {
        Parsed::Packet(pkt) => pkt,
        other => return egress_other(ctx, other),
    };
    account(DIR.hook(), pkt.proto, ctx.len());
    // Nothing is ours until the loader has told the datapath its external address.
    let Some(cfg) = settings() else {
        return Ok(pass(Counter::PassNoMatch));
    };
    if pkt.proto == IPPROTO_ICMP && pkt.icmp_type != ICMP_ECHO_REQUEST {
        // An echo reply has no mapping to leave by; from a container it would leave with
        // the container's address.
        if fwd::is_masqueraded(pkt.src_addr) {
            return Err(Counter::DropUntranslatable);
        }
        return Ok(pass(Counter::PassUnsupportedProto));
    }
    let key = pkt.key();
    let entry = match DIR.table().get_ptr_mut(key) {
        Some(entry) => entry,
        None => {
            // Only traffic from the containers' subnets is ours; the host's own traffic
            // (already sourced from the uplink address) passes untouched. One subnet lookup
            // answers both questions: whose, and which bridge.
            match fwd::bridge_of(pkt.src_addr) {
                Some(bridge) => {
                    let flags = fwd::bridge_flags(bridge);
                    // An internal network never leaves, even through the host's own
                    // forwarding (before the loader has attached the port program to a new
                    // container's port).
                    if flags & BRIDGE_INTERNAL != 0 {
                        return Err(Counter::DropInternal);
                    }
                    if flags & BRIDGE_NO_MASQUERADE != 0 {
                        return Ok(pass(Counter::PassNotMasqueraded));
                    }
                }
                // The host's own flow: its own, unless a container's mapping already holds
                // its reply tuple (the host picked the port without knowing of the mapping).
                // Then the peer's answers would go to the container: the host's flow gets
                // another port instead, as nf_nat remaps a host flow that clashes.
                None if pkt.src_addr == cfg.external_addr && clashes_with_a_mapping(&key) => {
                    count(Counter::HostFlowsRemapped);
                }
                None => return Ok(pass(Counter::PassNoMatch)),
            }
            if pkt.proto == IPPROTO_TCP && !valid_tcp_flags(pkt.tcp_flags) {
                return Err(Counter::DropInvalidTcp);
            }
            create_mapping(ctx, &key, &cfg)?
        }
    };
    apply(ctx, DIR, &pkt, &key, entry)?;
    Ok(NEXT)
}

/// Whether the host's own flow `key` (from the uplink address) has a reply tuple that a
/// mapping already holds: the peer's answers to it would be translated for that mapping.
#[inline(always)]
fn clashes_with_a_mapping(key: &FlowKey) -> bool {
    NAT_IN.get_ptr(key.reversed()).is_some()
}

/// Egress of what is not a flow's packet: ICMP errors, later fragments, what passes.
#[inline(always)]
fn egress_other(ctx: &TcContext, parsed: Parsed) -> Result<i32, Counter> {
    const DIR: Dir = Dir::Egress;
    account(DIR.hook(), parsed.proto(), ctx.len());
    if settings().is_none() {
        return Ok(pass(Counter::PassNoMatch));
    }
    match parsed {
        Parsed::IcmpError(err) => {
            if !fwd::is_masqueraded(err.src_addr) {
                return Ok(pass(Counter::PassNoMatch));
            }
            if icmp::translate_outbound(ctx, &err)? {
                return Ok(NEXT);
            }
            // About no flow of ours: it would leave with the container's address.
            Err(Counter::DropUntranslatable)
        }
        Parsed::LaterFragment(f) => {
            if !fwd::is_masqueraded(f.src_addr) {
                return Ok(pass(Counter::PassFragment));
            }
            // Unknown: forwarding it would leak the internal address.
            match follow_fragment(ctx, DIR, &f)? {
                Some(_) => Ok(NEXT),
                None => Err(Counter::DropFragmentUnknown),
            }
        }
        Parsed::Pass(reason) => {
            // Nothing leaves with a container's address: an ICMP message that is neither
            // echo nor a quotable error, or an error with a quote we cannot read.
            if reason != Counter::PassNotIpv4
                && read_at::<u32>(ctx, IP_SRC_OFF).is_some_and(fwd::is_masqueraded)
            {
                return Err(Counter::DropUntranslatable);
            }
            Ok(pass(reason))
        }
        Parsed::Packet(_) => Ok(pass(Counter::PassNoMatch)),
    }
}

/// Uplink ingress: send replies of masqueraded flows, and new connections to published
/// ports, to their container.
#[inline(always)]
pub fn try_ingress(ctx: &TcContext) -> Result<i32, Counter> {
    const DIR: Dir = Dir::Ingress;
    count(Counter::IngressPackets);
    // As on egress: the flow's packet first, before any helper call.
    let pkt = match parse(ctx)? {
        Parsed::Packet(pkt) => pkt,
        other => return ingress_other(ctx, other),
    };
    account(DIR.hook(), pkt.proto, ctx.len());
    let Some(cfg) = settings() else {
        return Ok(pass(Counter::PassNoMatch));
    };
    if pkt.dst_addr != cfg.external_addr {
        // Nothing reaches a container from outside except replies and published ports,
        // even when the outside has a route to it.
        if fwd::refused_from_outside(fwd::bridge_of(pkt.dst_addr), pkt.proto, pkt.tcp_flags) {
            return Err(Counter::DropDirectAccess);
        }
        return Ok(pass(Counter::PassNoMatch));
    }
    if pkt.proto == IPPROTO_ICMP && pkt.icmp_type != ICMP_ECHO_REPLY {
        return Ok(pass(Counter::PassUnsupportedProto));
    }
    let key = pkt.key();
    let entry = match DIR.table().get_ptr_mut(key) {
        Some(entry) => entry,
        None => match published(pkt.proto, pkt.dst_addr, pkt.dst_port) {
            // A new connection to a published port (TCP/UDP only: ICMP has no ports).
            Some(target) if pkt.proto != IPPROTO_ICMP => {
                // Only a SYN opens a TCP connection from outside. A mid-stream segment or a
                // forged flag combination creates nothing: any remote could fill the table
                // with them, and a published port has no older connection to pick up that
                // its own mapping does not hold.
                if pkt.proto == IPPROTO_TCP && !opens_connection(pkt.tcp_flags) {
                    return Err(if valid_tcp_flags(pkt.tcp_flags) {
                        Counter::DropStrayTcp
                    } else {
                        Counter::DropInvalidTcp
                    });
                }
                create_published_mapping(&key, &target, &cfg)?
            }
            _ => {
                if is_stray_tcp(ctx, &pkt) {
                    return Err(Counter::DropStrayTcp);
                }
                // Not a reply to a masqueraded flow (e.g. the host's own traffic): not ours.
                return Ok(pass(Counter::PassNoMatch));
            }
        },
    };
    let addr = apply(ctx, DIR, &pkt, &key, entry)?;
    fwd::to_container(ctx, addr)
}

/// Ingress of what is not a flow's packet: ICMP errors, later fragments, what passes.
#[inline(always)]
fn ingress_other(ctx: &TcContext, parsed: Parsed) -> Result<i32, Counter> {
    const DIR: Dir = Dir::Ingress;
    account(DIR.hook(), parsed.proto(), ctx.len());
    let Some(cfg) = settings() else {
        return Ok(pass(Counter::PassNoMatch));
    };
    match parsed {
        Parsed::IcmpError(err) => {
            if err.dst_addr == cfg.external_addr {
                if let Some(addr) = icmp::translate_inbound(ctx, &err)? {
                    return fwd::to_container(ctx, addr);
                }
            }
            if fwd::is_masqueraded(err.dst_addr) {
                return Err(Counter::DropDirectAccess);
            }
            Ok(pass(Counter::PassNoMatch))
        }
        Parsed::LaterFragment(f) => {
            if f.dst_addr != cfg.external_addr {
                if fwd::is_masqueraded(f.dst_addr) {
                    return Err(Counter::DropDirectAccess);
                }
                return Ok(pass(Counter::PassFragment));
            }
            // Unknown fragments to the uplink address may be the host's own: let it have them.
            match follow_fragment(ctx, DIR, &f)? {
                Some(addr) => fwd::to_container(ctx, addr),
                None => Ok(pass(Counter::PassFragment)),
            }
        }
        Parsed::Pass(reason) => {
            // Whatever it is, nothing reaches a container from outside directly.
            if reason != Counter::PassNotIpv4
                && read_at::<u32>(ctx, IP_DST_OFF).is_some_and(fwd::is_masqueraded)
            {
                return Err(Counter::DropDirectAccess);
            }
            Ok(pass(reason))
        }
        Parsed::Packet(_) => Ok(pass(Counter::PassNoMatch)),
    }
}

/// A mid-stream TCP segment (no SYN, no RST) for the uplink address that no mapping and no
/// local socket claims. Passing it would make the host answer with a RST and kill a
/// connection whose mapping was just flushed or expired and is about to be picked up again
/// by its next outbound segment; dropping it lets the peer retransmit instead.
#[inline(always)]
fn is_stray_tcp(ctx: &TcContext, pkt: &Packet) -> bool {
    pkt.proto == IPPROTO_TCP
        && pkt.tcp_flags & (TCP_SYN | TCP_RST) == 0
        && !host::has_socket(
            ctx,
            pkt.proto,
            pkt.src_addr,
            pkt.dst_addr,
            pkt.src_port,
            pkt.dst_port,
        )
}
