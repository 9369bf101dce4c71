//! IPv6 parsing: the fixed header, the extension headers walked in a bounded loop, and the
//! L4 view the NAT needs (TCP, UDP, ICMPv6 echo).
//!
//! IPv6 frames reach the IPv6 programs by a tail call from the IPv4 entry points (see
//! [`dispatch`]), so that each family's programs are verified on their own and the IPv4 path
//! pays one comparison for it. The fixed header, and the L4 header of a packet without
//! extension headers (nearly all of them), are read in place at constant offsets. Headers
//! behind extension headers sit at offsets only known at run time: those reads copy with
//! `bpf_skb_load_bytes` (`ctx.load`), which checks its bounds itself, and every write goes
//! through helpers.

use aya_ebpf::{
    btf_maps::ProgramArray, helpers::bpf_tail_call, programs::TcContext, EbpfContext as _,
};
use bpfnat_common::{
    wire::{
        ETH_P_IPV6, ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
        ICMPV6_PARAMETER_PROBLEM, IPV6_DSTOPTS, IPV6_FRAGMENT, IPV6_HOPOPTS, IPV6_ROUTING,
    },
    Counter, FlowKey6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    maps::{IPV6_PROGS, PACKET6},
    parse::{ptr_at, pull, read_at, ETH_HLEN, L4},
};

/// The fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// Source and destination addresses, relative to the frame start.
pub const IP6_SRC_OFF: usize = ETH_HLEN + 8;
pub const IP6_DST_OFF: usize = ETH_HLEN + 24;
/// At most this many extension headers are walked; a packet with more is not translated.
const MAX_EXT_HEADERS: usize = 8;
/// The fixed TCP header.
const TCP_HLEN: usize = 20;
/// Where the L4 header starts when there is no extension header.
const L4_NO_EXT: usize = ETH_HLEN + IPV6_HLEN;

/// The fixed IPv6 header, as it lies in the packet.
#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// The fixed header in place (after [`pull`]), or `None` for a frame too short to hold it.
#[inline(always)]
pub fn fixed_header(ctx: &TcContext) -> Option<*const Ipv6Hdr> {
    ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN).map(|p| p as *const Ipv6Hdr)
}

/// The L4 header's first bytes at `off`: in place when `off` is that of a packet without
/// extension headers and the bytes are linear, else copied.
#[inline(always)]
fn read_l4<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    if off == L4_NO_EXT {
        if let Some(p) = ptr_at::<T>(ctx, L4_NO_EXT) {
            // SAFETY: the pointer comes from the bounds-checked accessor (`parse::ptr_at`),
            // which checked that every byte lies between data and data_end; unaligned reads
            // are allowed.
            return Some(unsafe { p.read_unaligned() });
        }
    }
    ctx.load(off).ok()
}

/// Tail-call program `index` of `programs` (it does not come back on success). Always
/// inlined: aya's `ProgramArray::tail_call` is a plain function, which LLVM may leave as a BPF
/// subprogram once it has two callers (the traced and untraced copies of a program's logic),
/// and the verifier refuses a tail call from a subprogram that does not return an int.
///
/// # Safety
/// As for any tail call: nothing the caller holds on its stack may be needed afterwards.
#[inline(always)]
pub unsafe fn tail_call<const N: usize, const F: usize>(
    ctx: &TcContext,
    programs: &ProgramArray<N, F>,
    index: u32,
) {
    // SAFETY: the context is this program's, and `programs` a program array map (its static
    // is the map definition the loader relocates).
    unsafe {
        bpf_tail_call(
            ctx.as_ptr(),
            programs as *const ProgramArray<N, F> as *mut core::ffi::c_void,
            index,
        );
    }
}

/// If the frame is IPv6, hand it to the IPv6 program at `index` of `IPV6_PROGS` (a tail
/// call: it does not come back). If that slot is empty (an old loader) the IPv4 program goes
/// on and passes the frame as not IPv4.
#[inline(always)]
pub fn dispatch(ctx: &TcContext, index: u32) {
    let is_ipv6 = read_at::<u16>(ctx, 12).is_some_and(|t| u16::from_be(t) == ETH_P_IPV6);
    if is_ipv6 {
        // SAFETY: a tail call to a program of the same type, from an entry point (nothing on
        // its stack needs to survive: control does not come back on success).
        unsafe { tail_call(ctx, &IPV6_PROGS, index) };
    }
}

/// A packet of an IPv6 flow: TCP, UDP or ICMPv6 echo. Parsed into a per-CPU scratch slot
/// (`PACKET6`): 128-bit addresses leave little room on the stack.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Packet6 {
    pub proto: u8,
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    /// Ports, or the echo identifier (request: source, reply: destination), network order.
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMPv6 type (0 for TCP/UDP).
    pub icmp_type: u8,
    /// TCP header flags.
    pub tcp_flags: u8,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// The IPv6 payload length (0: a jumbogram or a BIG TCP packet).
    pub payload_len: u16,
    pub l4: L4,
    /// The fragment header's identification (network order) of a fragment; `first_fragment`:
    /// the first of several (it carries the L4 header and is translated).
    pub frag_id: u32,
    pub first_fragment: bool,
    /// An ICMPv6 error (destination unreachable, packet too big, time exceeded, parameter
    /// problem): the offset of the IPv6 header it quotes, 0 otherwise. The quoted packet's
    /// tuple and L4 fields follow.
    pub inner_off: usize,
    pub inner_proto: u8,
    pub inner_src: [u32; 4],
    pub inner_dst: [u32; 4],
    pub inner_sport: u16,
    pub inner_dport: u16,
    pub inner_l4: L4,
    /// The flow's key ([`Packet6::key`]), kept here by the uplink programs rather than on
    /// their stack.
    pub flow: FlowKey6,
}

impl Packet6 {
    #[inline(always)]
    pub fn key(&self) -> FlowKey6 {
        FlowKey6::new(
            self.src_addr,
            self.dst_addr,
            self.src_port,
            self.dst_port,
            self.proto,
        )
    }
}

/// This CPU's slot for the packet being parsed (`PACKET6`).
#[inline(always)]
pub fn packet_slot() -> Result<&'static mut Packet6, Counter> {
    let slot = PACKET6.get_ptr_mut(0).ok_or(Counter::DropMalformed)?;
    // SAFETY: this CPU's scratch slot, from a successful lookup; nothing else uses it while
    // this program runs.
    Ok(unsafe { &mut *slot })
}

/// Parse an Ethernet + IPv6 frame (the caller knows it is IPv6) into `pkt`. `Ok(None)`: a
/// packet of a flow; `Ok(Some(reason))`: anything else, not translated for `reason` (`pkt`
/// then holds its addresses and protocol, for the direct-access and leak checks). `Err`:
/// malformed, dropped.
#[inline(always)]
pub fn parse6(ctx: &TcContext, pkt: &mut Packet6) -> Result<Option<Counter>, Counter> {
    let malformed = Counter::DropMalformed;
    pull(ctx, ETH_HLEN + IPV6_HLEN + TCP_HLEN)?;
    let hdr = fixed_header(ctx).ok_or(malformed)?;
    // SAFETY: the pointer comes from the bounds-checked accessor (`parse::ptr_at`): the whole
    // fixed header lies between data and data_end; unaligned reads are allowed.
    let (version, payload_len, first_next) = unsafe {
        pkt.src_addr = core::ptr::addr_of!((*hdr).src).read_unaligned();
        pkt.dst_addr = core::ptr::addr_of!((*hdr).dst).read_unaligned();
        (
            (*hdr).version_class_flow[0] >> 4,
            u16::from_be_bytes((*hdr).payload_len),
            (*hdr).next_header,
        )
    };
    if version != 6 {
        return Err(malformed);
    }
    pkt.payload_len = payload_len;
    pkt.src_port = 0;
    pkt.dst_port = 0;
    pkt.icmp_type = 0;
    pkt.tcp_flags = 0;
    pkt.inner_off = 0;
    pkt.frag_id = 0;
    pkt.first_fragment = false;
    let mut next = first_next;
    let mut off = ETH_HLEN + IPV6_HLEN;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                // Next header, then the length in 8-octet units after the first 8.
                let ext: [u8; 2] = ctx.load(off).map_err(|_| malformed)?;
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                // Next header, reserved, offset (13 bits) and flags, identification.
                let frag: [u8; 8] = ctx.load(off).map_err(|_| malformed)?;
                next = frag[0];
                let offset_flags = u16::from_be_bytes([frag[2], frag[3]]);
                pkt.frag_id = u32::from_ne_bytes([frag[4], frag[5], frag[6], frag[7]]);
                pkt.first_fragment = offset_flags & 1 != 0;
                if offset_flags & 0xfff8 != 0 {
                    // A later fragment: no L4 header.
                    pkt.proto = next;
                    return Ok(Some(Counter::PassFragment));
                }
                off += 8;
            }
            _ => break,
        }
    }
    pkt.proto = next;
    pkt.l4_off = off;
    match next {
        IPPROTO_TCP => {
            let hdr: [u8; TCP_HLEN] = read_l4(ctx, off).ok_or(malformed)?;
            let ports = [
                u16::from_ne_bytes([hdr[0], hdr[1]]),
                u16::from_ne_bytes([hdr[2], hdr[3]]),
            ];
            pkt.l4 = L4 {
                src_port_off: off,
                dst_port_off: off + 2,
                csum_off: off + 16,
                pseudo_header: true,
                udp: false,
            };
            pkt.src_port = ports[0];
            pkt.dst_port = ports[1];
            pkt.tcp_flags = hdr[13];
            Ok(None)
        }
        IPPROTO_UDP => {
            let hdr: [u16; 4] = read_l4(ctx, off).ok_or(malformed)?;
            pkt.l4 = L4 {
                src_port_off: off,
                dst_port_off: off + 2,
                csum_off: off + 6,
                pseudo_header: true,
                udp: true,
            };
            pkt.src_port = hdr[0];
            pkt.dst_port = hdr[1];
            Ok(None)
        }
        IPPROTO_ICMPV6 => {
            // type, code, checksum, identifier, sequence
            let hdr: [u8; 8] = read_l4(ctx, off).ok_or(malformed)?;
            let id = u16::from_ne_bytes([hdr[4], hdr[5]]);
            // ICMPv6's checksum covers a pseudo-header, unlike ICMP's.
            pkt.l4 = L4 {
                src_port_off: off + 4,
                dst_port_off: off + 4,
                csum_off: off + 2,
                pseudo_header: true,
                udp: false,
            };
            pkt.icmp_type = hdr[0];
            match hdr[0] {
                ICMPV6_ECHO_REQUEST => pkt.src_port = id,
                ICMPV6_ECHO_REPLY => pkt.dst_port = id,
                ICMPV6_DEST_UNREACH..=ICMPV6_PARAMETER_PROBLEM => {
                    parse_quote(ctx, pkt, off + 8);
                    return Ok(Some(Counter::PassUnsupportedProto));
                }
                _ => return Ok(Some(Counter::PassUnsupportedProto)),
            }
            Ok(None)
        }
        _ => Ok(Some(Counter::PassUnsupportedProto)),
    }
}

/// The packet an ICMPv6 error quotes, at `inner` (its IPv6 header): a TCP, UDP or ICMPv6 echo
/// packet of a flow, with the first 8 bytes of its L4 header at least. Anything else (a quote
/// too short, behind extension headers) leaves `pkt.inner_off` 0: not an error about a flow.
#[inline(always)]
fn parse_quote(ctx: &TcContext, pkt: &mut Packet6, inner: usize) {
    let Ok(fixed) = ctx.load::<[u8; 8]>(inner) else {
        return;
    };
    if fixed[0] >> 4 != 6 {
        return;
    }
    let (Ok(src), Ok(dst), Ok(l4)) = (
        ctx.load::<[u32; 4]>(inner + 8),
        ctx.load::<[u32; 4]>(inner + 24),
        ctx.load::<[u8; 8]>(inner + IPV6_HLEN),
    ) else {
        return;
    };
    let off = inner + IPV6_HLEN;
    let ports = (
        u16::from_ne_bytes([l4[0], l4[1]]),
        u16::from_ne_bytes([l4[2], l4[3]]),
    );
    let quoted_len = ctx.len() as usize;
    let (sport, dport, csum_off, udp) = match fixed[6] {
        // The TCP checksum only if the quote reaches it.
        IPPROTO_TCP => (
            ports.0,
            ports.1,
            if quoted_len >= off + 18 { off + 16 } else { 0 },
            false,
        ),
        IPPROTO_UDP => (ports.0, ports.1, off + 6, true),
        IPPROTO_ICMPV6 => {
            let id = u16::from_ne_bytes([l4[4], l4[5]]);
            match l4[0] {
                ICMPV6_ECHO_REQUEST => (id, 0, off + 2, false),
                ICMPV6_ECHO_REPLY => (0, id, off + 2, false),
                _ => return,
            }
        }
        _ => return,
    };
    let id_off = if fixed[6] == IPPROTO_ICMPV6 {
        off + 4
    } else {
        0
    };
    pkt.inner_proto = fixed[6];
    pkt.inner_src = src;
    pkt.inner_dst = dst;
    pkt.inner_sport = sport;
    pkt.inner_dport = dport;
    pkt.inner_l4 = L4 {
        src_port_off: if id_off != 0 { id_off } else { off },
        dst_port_off: if id_off != 0 { id_off } else { off + 2 },
        csum_off,
        pseudo_header: true,
        udp,
    };
    pkt.inner_off = inner;
}

/// The TCP segment's sequence numbers (host order) and where its sequence space ends.
#[inline(always)]
pub fn segment6(ctx: &TcContext, pkt: &Packet6) -> crate::nat::Segment {
    let hdr: [u8; 16] = read_l4(ctx, pkt.l4_off).unwrap_or([0; 16]);
    let seq = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let ack = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    let doff = (hdr[12] >> 4) as u32 * 4;
    // The payload length counts from the end of the fixed header: extension headers and the
    // TCP header come off it. 0 (a jumbogram, or BIG TCP): from the packet's length.
    let after_fixed = if pkt.payload_len != 0 {
        pkt.payload_len as u32
    } else {
        ctx.len().saturating_sub((ETH_HLEN + IPV6_HLEN) as u32)
    };
    let headers = (pkt.l4_off - ETH_HLEN - IPV6_HLEN) as u32 + doff;
    let mut end = seq.wrapping_add(after_fixed.saturating_sub(headers));
    if pkt.tcp_flags & bpfnat_common::wire::TCP_SYN != 0 {
        end = end.wrapping_add(1);
    }
    if pkt.tcp_flags & bpfnat_common::wire::TCP_FIN != 0 {
        end = end.wrapping_add(1);
    }
    crate::nat::Segment {
        flags: pkt.tcp_flags,
        seq,
        ack,
        end,
    }
}
