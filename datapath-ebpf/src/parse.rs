//! Packet parsing: a bounds-checked accessor and the IPv4 + L4 views the NAT needs.
//!
//! Offsets are relative to the start of the frame (`ctx.data()`), which on TC hooks of an
//! Ethernet device is the Ethernet header. The views hold offsets, not pointers: every rewrite
//! goes through helpers that may move the packet, after which old pointers are invalid.

use aya_ebpf::programs::TcContext;
use bpfnat_common::{
    wire::{
        ETH_P_IP, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PARAMETER_PROBLEM,
        ICMP_TIME_EXCEEDED,
    },
    Counter, FlowKey, IPPROTO_DCCP, IPPROTO_ICMP, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
    IPPROTO_UDPLITE,
};

pub const ETH_HLEN: usize = 14;
/// IPv4 header checksum field, relative to the frame start.
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
/// IPv4 total length, relative to the frame start.
pub const IP_TOT_LEN_OFF: usize = ETH_HLEN + 2;
pub const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub const IP_DST_OFF: usize = ETH_HLEN + 16;
/// The TTL, and the protocol after it: one 16-bit word of the IPv4 header.
pub const IP_TTL_OFF: usize = ETH_HLEN + 8;
pub const IPV4_MIN_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// The fixed TCP header (ports, flags, checksum: all the datapath reads).
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// The part of a DCCP header with the ports and the checksum; of SCTP's common header, the
/// ports.
const DCCP_HLEN: usize = 8;
const SCTP_PORTS_LEN: usize = 4;

const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// Bounds-checked pointer to a `T` at `offset` in the linear part of the packet.
///
/// The comparison against `data_end` is what lets the verifier accept the later dereference.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// How header fields are read. The hot path reads packet memory directly; the quote inside
/// an ICMP error sits behind two variable-length IP headers, where the verifier cannot
/// always follow direct access, so it is copied out with `bpf_skb_load_bytes` (ICMP errors
/// are rare, the copy is cheap).
trait Reader {
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;
}

/// A `T` at `offset` read in packet memory, if that part of the packet is linear. Unaligned:
/// IP options and odd link headers do not keep fields aligned.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    // SAFETY: the pointers come from the bounds-checked accessor (`parse::ptr_at`), which
    // checked that every byte lies between data and data_end; unaligned access is allowed.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Direct packet access with a bounds check.
struct Direct<'a>(&'a TcContext);

impl Reader for Direct<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        read_at(self.0, offset)
    }
}

/// Copies through `bpf_skb_load_bytes`, which checks bounds itself.
struct Copied<'a>(&'a TcContext);

impl Reader for Copied<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        self.0.load::<T>(offset).ok()
    }
}

/// Make up to `want` bytes linear (headers may sit in paged fragments after GRO or on some
/// drivers); a packet shorter than `want` is pulled whole.
#[inline(always)]
pub fn pull(ctx: &TcContext, want: usize) -> Result<(), Counter> {
    let linear = ctx.data_end() - ctx.data();
    if linear < want && (ctx.len() as usize) > linear {
        let want = core::cmp::min(ctx.len() as usize, want);
        ctx.pull_data(want as u32)
            .map_err(|_| Counter::DropMalformed)?;
    }
    Ok(())
}

/// Where the rewrite helpers find an L4 header's fields.
#[derive(Clone, Copy)]
pub struct L4 {
    /// Offset of the source port (TCP/UDP) or ICMP echo identifier.
    pub src_port_off: usize,
    /// Offset of the destination port (TCP/UDP) or ICMP echo identifier.
    pub dst_port_off: usize,
    /// Offset of the L4 checksum field; 0 when it is not inside the packet (an ICMP error
    /// may quote only the first 8 bytes of a TCP header). Not an `Option`: LLVM may store an
    /// enum's unset payload from an uninitialised register, which the verifier rejects.
    pub csum_off: usize,
    /// Whether the L4 checksum covers the IPv4 pseudo-header (TCP, UDP; not ICMP).
    pub pseudo_header: bool,
    /// UDP: a zero checksum means "none" and must stay zero.
    pub udp: bool,
}

/// A packet of a flow: TCP, UDP, ICMP echo, a protocol with ports (UDP-Lite, DCCP, SCTP) or
/// any other protocol (ports 0). Ports/identifiers in network byte order; for ICMP echo the
/// identifier is the source "port" of a request and the destination "port" of a reply
/// (see `FlowKey`).
#[derive(Clone, Copy)]
pub struct Packet {
    pub proto: u8,
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP type (0 for TCP/UDP).
    pub icmp_type: u8,
    /// TCP header flags (0 for UDP/ICMP).
    pub tcp_flags: u8,
    /// First fragment of a fragmented datagram (more fragments follow).
    pub first_fragment: bool,
    /// IP id, network order.
    pub ip_id: u16,
    pub l4: L4,
}

/// A non-first fragment: no L4 header, only the IP header to rewrite.
#[derive(Clone, Copy)]
pub struct Fragment {
    pub proto: u8,
    pub src_addr: u32,
    pub dst_addr: u32,
    /// IP id, network order.
    pub id: u16,
}

/// An ICMP error (destination unreachable, time exceeded, parameter problem) and the
/// packet it quotes.
#[derive(Clone, Copy)]
pub struct IcmpError {
    pub src_addr: u32,
    pub dst_addr: u32,
    /// Offset of the outer ICMP checksum.
    pub icmp_csum_off: usize,
    /// Offset of the quoted IPv4 header.
    pub inner_ip_off: usize,
    /// The quoted packet, as it was sent.
    pub inner: Packet,
}

pub enum Parsed {
    Packet(Packet),
    LaterFragment(Fragment),
    IcmpError(IcmpError),
    /// Not for the NAT: pass it untouched and count why.
    Pass(Counter),
}

impl Packet {
    /// The packet's tuple, as the connection tables key it.
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey::new(
            self.src_addr,
            self.dst_addr,
            self.src_port,
            self.dst_port,
            self.proto,
        )
    }
}

impl Parsed {
    /// The IP protocol, for accounting (0 when not IPv4 or not known).
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        match self {
            Parsed::Packet(p) => p.proto,
            Parsed::LaterFragment(f) => f.proto,
            Parsed::IcmpError(_) => IPPROTO_ICMP,
            Parsed::Pass(_) => 0,
        }
    }
}

/// The fields of an IPv4 header at `ip_off` that the NAT uses.
struct Ipv4 {
    hlen: usize,
    proto: u8,
    src_addr: u32,
    dst_addr: u32,
    frag: u16,
    id: u16,
}

#[inline(always)]
fn parse_ipv4<R: Reader>(ctx: &R, ip_off: usize) -> Result<Ipv4, Counter> {
    let version_ihl: u8 = ctx.read(ip_off).ok_or(Counter::DropMalformed)?;
    if version_ihl >> 4 != 4 {
        return Err(Counter::DropMalformed);
    }
    let hlen = ((version_ihl & 0x0f) as usize) * 4;
    if hlen < IPV4_MIN_HLEN {
        return Err(Counter::DropMalformed);
    }
    let total_len = u16::from_be(ctx.read::<u16>(ip_off + 2).ok_or(Counter::DropMalformed)?);
    if (total_len as usize) < hlen {
        return Err(Counter::DropMalformed);
    }
    Ok(Ipv4 {
        hlen,
        proto: ctx.read(ip_off + 9).ok_or(Counter::DropMalformed)?,
        src_addr: ctx.read(ip_off + 12).ok_or(Counter::DropMalformed)?,
        dst_addr: ctx.read(ip_off + 16).ok_or(Counter::DropMalformed)?,
        frag: u16::from_be(ctx.read::<u16>(ip_off + 6).ok_or(Counter::DropMalformed)?),
        id: ctx.read(ip_off + 4).ok_or(Counter::DropMalformed)?,
    })
}

/// What the L4 header turned out to be.
enum L4Kind {
    Packet(Packet),
    /// An ICMP error message (its quote is parsed separately, never recursively).
    IcmpError,
    Pass(Counter),
}

/// The L4 part of a packet whose IPv4 header is `ip`. `quoted`: inside an ICMP error, where
/// only the first 8 bytes of the L4 header are guaranteed.
#[inline(always)]
fn parse_l4<R: Reader>(ctx: &R, ip: &Ipv4, l4_off: usize, quoted: bool) -> Result<L4Kind, Counter> {
    let packet = |src_port, dst_port, icmp_type, tcp_flags, l4| Packet {
        proto: ip.proto,
        src_addr: ip.src_addr,
        dst_addr: ip.dst_addr,
        src_port,
        dst_port,
        icmp_type,
        tcp_flags,
        first_fragment: ip.frag & IP_MF != 0,
        ip_id: ip.id,
        l4,
    };
    match ip.proto {
        IPPROTO_TCP => {
            let ports: [u16; 2] = ctx.read(l4_off).ok_or(Counter::DropMalformed)?;
            // A live packet must hold the whole fixed TCP header; a quoted one may not.
            let full = ctx.read::<[u8; 20]>(l4_off);
            if full.is_none() && !quoted {
                return Err(Counter::DropMalformed);
            }
            let tcp_flags = full.map_or(0, |h| h[13]);
            let l4 = L4 {
                src_port_off: l4_off,
                dst_port_off: l4_off + 2,
                csum_off: if full.is_some() { l4_off + 16 } else { 0 },
                pseudo_header: true,
                udp: false,
            };
            Ok(L4Kind::Packet(packet(ports[0], ports[1], 0, tcp_flags, l4)))
        }
        // UDP, and the protocols with its layout (ports, then a checksum over the
        // pseudo-header at 6), translated like it, except that a zero UDP-Lite or DCCP
        // checksum is not "none". Only UDP inside an ICMP error.
        IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_DCCP if ip.proto == IPPROTO_UDP || !quoted => {
            let hdr: [u16; 4] = ctx.read(l4_off).ok_or(Counter::DropMalformed)?;
            let l4 = L4 {
                src_port_off: l4_off,
                dst_port_off: l4_off + 2,
                csum_off: l4_off + 6,
                pseudo_header: true,
                udp: ip.proto == IPPROTO_UDP,
            };
            Ok(L4Kind::Packet(packet(hdr[0], hdr[1], 0, 0, l4)))
        }
        IPPROTO_ICMP => {
            // type, code, checksum, identifier, sequence
            let hdr: [u8; 8] = ctx.read(l4_off).ok_or(Counter::DropMalformed)?;
            let icmp_type = hdr[0];
            let id = u16::from_ne_bytes([hdr[4], hdr[5]]);
            let l4 = L4 {
                src_port_off: l4_off + 4,
                dst_port_off: l4_off + 4,
                csum_off: l4_off + 2,
                pseudo_header: false,
                udp: false,
            };
            match icmp_type {
                ICMP_ECHO_REQUEST => Ok(L4Kind::Packet(packet(id, 0, icmp_type, 0, l4))),
                ICMP_ECHO_REPLY => Ok(L4Kind::Packet(packet(0, id, icmp_type, 0, l4))),
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    Ok(L4Kind::IcmpError)
                }
                _ => Ok(L4Kind::Pass(Counter::PassUnsupportedProto)),
            }
        }
        // SCTP: ports, and a CRC32c over the packet that the addresses are not part of. The
        // datapath cannot recompute the CRC, so an association keeps its ports (a taken port
        // is dropped as `drop_no_port`) and only the address changes.
        IPPROTO_SCTP if !quoted => {
            let ports: [u16; 2] = ctx.read(l4_off).ok_or(Counter::DropMalformed)?;
            let l4 = L4 {
                src_port_off: l4_off,
                dst_port_off: l4_off + 2,
                csum_off: 0,
                pseudo_header: false,
                udp: false,
            };
            Ok(L4Kind::Packet(packet(ports[0], ports[1], 0, 0, l4)))
        }
        // Any other protocol (GRE, ESP, ...): no ports, translated by address only, like
        // nf_conntrack's generic tracker (one flow per protocol and peer address).
        _ if !quoted => {
            let l4 = L4 {
                src_port_off: l4_off,
                dst_port_off: l4_off,
                csum_off: 0,
                pseudo_header: false,
                udp: false,
            };
            Ok(L4Kind::Packet(packet(0, 0, 0, 0, l4)))
        }
        _ => Ok(L4Kind::Pass(Counter::PassUnsupportedProto)),
    }
}

/// An ICMP error quoting a TCP/UDP/echo packet.
#[inline(always)]
fn parse_icmp_error(ctx: &TcContext, outer: &Ipv4, icmp_off: usize) -> Result<Parsed, Counter> {
    let inner_ip_off = icmp_off + ICMP_HLEN;
    let quote = Copied(ctx);
    let Ok(inner_ip) = parse_ipv4(&quote, inner_ip_off) else {
        // A truncated quote cannot belong to one of our flows.
        return Ok(Parsed::Pass(Counter::PassUnsupportedProto));
    };
    if inner_ip.frag & IP_OFFSET_MASK != 0 {
        return Ok(Parsed::Pass(Counter::PassUnsupportedProto));
    }
    let inner_l4_off = inner_ip_off + inner_ip.hlen;
    match parse_l4(&quote, &inner_ip, inner_l4_off, true) {
        Ok(L4Kind::Packet(inner)) => Ok(Parsed::IcmpError(IcmpError {
            src_addr: outer.src_addr,
            dst_addr: outer.dst_addr,
            icmp_csum_off: icmp_off + 2,
            inner_ip_off,
            inner,
        })),
        _ => Ok(Parsed::Pass(Counter::PassUnsupportedProto)),
    }
}

/// Parse an Ethernet + IPv4 frame.
///
/// Errors (`Err`) are malformed packets the caller drops; everything we do not translate
/// comes back as `Parsed::Pass`.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, Counter> {
    // Only the headers become linear, never payload: a TCP segment's payload sits in page
    // fragments, and pulling any of it into the linear area would copy (and reallocate the
    // head) for nothing. First the fixed part of the IPv4 header, then exactly the IP options
    // and the L4 header fields the datapath reads; usually both are linear already.
    pull(ctx, ETH_HLEN + IPV4_MIN_HLEN)?;
    let direct = Direct(ctx);
    let ether_type: u16 = match direct.read::<u16>(12) {
        Some(t) => u16::from_be(t),
        None => return Ok(Parsed::Pass(Counter::PassNotIpv4)),
    };
    if ether_type != ETH_P_IP {
        return Ok(Parsed::Pass(Counter::PassNotIpv4));
    }
    let (Some(version_ihl), Some(proto)) =
        (direct.read::<u8>(ETH_HLEN), direct.read::<u8>(ETH_HLEN + 9))
    else {
        return Err(Counter::DropMalformed);
    };
    let l4_needed = match proto {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        IPPROTO_ICMP => ICMP_HLEN,
        IPPROTO_UDPLITE | IPPROTO_DCCP => DCCP_HLEN,
        IPPROTO_SCTP => SCTP_PORTS_LEN,
        _ => 0,
    };
    pull(
        ctx,
        ETH_HLEN + ((version_ihl & 0x0f) as usize) * 4 + l4_needed,
    )?;
    let ip = parse_ipv4(&direct, ETH_HLEN)?;
    // A non-first fragment carries no L4 header; the first one does and is translated.
    if ip.frag & IP_OFFSET_MASK != 0 {
        return Ok(Parsed::LaterFragment(Fragment {
            proto: ip.proto,
            src_addr: ip.src_addr,
            dst_addr: ip.dst_addr,
            id: ip.id,
        }));
    }
    let l4_off = ETH_HLEN + ip.hlen;
    match parse_l4(&direct, &ip, l4_off, false)? {
        L4Kind::Packet(pkt) => Ok(Parsed::Packet(pkt)),
        L4Kind::IcmpError => parse_icmp_error(ctx, &ip, l4_off),
        L4Kind::Pass(reason) => Ok(Parsed::Pass(reason)),
    }
}
