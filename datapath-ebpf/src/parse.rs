//! Packet parsing: a bounds-checked accessor and the IPv4 + L4 view the NAT needs.
//!
//! Offsets are relative to the start of the frame (`ctx.data()`), which on TC hooks of an
//! Ethernet device is the Ethernet header.

use aya_ebpf::programs::TcContext;
use bpfnat_common::{Counter, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// IPv4 header checksum field, relative to the frame start.
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub const IP_DST_OFF: usize = ETH_HLEN + 16;
const IPV4_MIN_HLEN: usize = 20;
/// Largest IPv4 header (IHL = 15) plus the largest L4 header part we read (TCP, 20 bytes).
const MAX_HEADERS: usize = ETH_HLEN + 60 + 20;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

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

#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    // Unaligned: IP options and odd link headers do not keep fields aligned.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// What the L4 header looks like for the rewrite helpers.
#[derive(Clone, Copy)]
pub struct L4 {
    /// Offset of the source port (TCP/UDP) or ICMP echo identifier.
    pub src_port_off: usize,
    /// Offset of the destination port (TCP/UDP) or ICMP echo identifier.
    pub dst_port_off: usize,
    /// Offset of the L4 checksum field.
    pub csum_off: usize,
    /// Whether the L4 checksum covers the IPv4 pseudo-header (TCP, UDP; not ICMP).
    pub pseudo_header: bool,
    /// Extra flag for `l4_csum_replace`: `BPF_F_MARK_MANGLED_0` for UDP, whose zero checksum
    /// means "no checksum" and must stay zero, and whose computed zero must become 0xffff.
    pub csum_flags: u64,
}

/// The IPv4 packet as the NAT sees it. Ports/identifiers in network byte order.
#[derive(Clone, Copy)]
pub struct Packet {
    pub proto: u8,
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP type (0 for TCP/UDP).
    pub icmp_type: u8,
    pub l4: L4,
}

pub enum Parsed {
    Packet(Packet),
    /// Not for the NAT: pass it untouched and count why.
    Pass(Counter),
}

/// Parse an Ethernet + IPv4 + TCP/UDP/ICMP frame.
///
/// Errors (`Err`) are malformed packets the caller drops; everything we simply do not
/// translate comes back as `Parsed::Pass`.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, Counter> {
    // Headers may sit in paged fragments (GRO, some drivers): make them linear first.
    let linear = ctx.data_end() - ctx.data();
    if linear < MAX_HEADERS && (ctx.len() as usize) > linear {
        let want = core::cmp::min(ctx.len() as usize, MAX_HEADERS);
        ctx.pull_data(want as u32)
            .map_err(|_| Counter::DropMalformed)?;
    }

    let ether_type: u16 = match read::<u16>(ctx, 12) {
        Some(t) => u16::from_be(t),
        None => return Ok(Parsed::Pass(Counter::PassNotIpv4)),
    };
    if ether_type != ETH_P_IP {
        return Ok(Parsed::Pass(Counter::PassNotIpv4));
    }

    let version_ihl: u8 = read(ctx, ETH_HLEN).ok_or(Counter::DropMalformed)?;
    if version_ihl >> 4 != 4 {
        return Err(Counter::DropMalformed);
    }
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(Counter::DropMalformed);
    }
    let total_len = u16::from_be(read::<u16>(ctx, ETH_HLEN + 2).ok_or(Counter::DropMalformed)?);
    if (total_len as usize) < ihl {
        return Err(Counter::DropMalformed);
    }
    let frag = u16::from_be(read::<u16>(ctx, ETH_HLEN + 6).ok_or(Counter::DropMalformed)?);
    let proto: u8 = read(ctx, ETH_HLEN + 9).ok_or(Counter::DropMalformed)?;
    let src_addr: u32 = read(ctx, IP_SRC_OFF).ok_or(Counter::DropMalformed)?;
    let dst_addr: u32 = read(ctx, IP_DST_OFF).ok_or(Counter::DropMalformed)?;

    // A non-first fragment carries no L4 header; the first one does and is translated.
    if frag & 0x1fff != 0 {
        return Ok(Parsed::Pass(Counter::PassFragment));
    }

    let l4_off = ETH_HLEN + ihl;
    let (src_port, dst_port, icmp_type, l4) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: [u16; 2] = read(ctx, l4_off).ok_or(Counter::DropMalformed)?;
            let (csum_off, csum_flags) = if proto == IPPROTO_TCP {
                // The whole fixed TCP header must be there, not just the ports.
                read::<[u8; 20]>(ctx, l4_off).ok_or(Counter::DropMalformed)?;
                (l4_off + 16, 0)
            } else {
                read::<[u8; 8]>(ctx, l4_off).ok_or(Counter::DropMalformed)?;
                (l4_off + 6, aya_ebpf::bindings::BPF_F_MARK_MANGLED_0 as u64)
            };
            let l4 = L4 {
                src_port_off: l4_off,
                dst_port_off: l4_off + 2,
                csum_off,
                pseudo_header: true,
                csum_flags,
            };
            (ports[0], ports[1], 0, l4)
        }
        IPPROTO_ICMP => {
            // type, code, checksum, identifier, sequence
            let hdr: [u8; 8] = read(ctx, l4_off).ok_or(Counter::DropMalformed)?;
            let icmp_type = hdr[0];
            let id = u16::from_ne_bytes([hdr[4], hdr[5]]);
            let l4 = L4 {
                src_port_off: l4_off + 4,
                dst_port_off: l4_off + 4,
                csum_off: l4_off + 2,
                pseudo_header: false,
                csum_flags: 0,
            };
            match icmp_type {
                // The identifier is the "source port" of a request and the "destination
                // port" of its reply (see FlowKey).
                ICMP_ECHO_REQUEST => (id, 0, icmp_type, l4),
                ICMP_ECHO_REPLY => (0, id, icmp_type, l4),
                _ => return Ok(Parsed::Pass(Counter::PassUnsupportedProto)),
            }
        }
        _ => return Ok(Parsed::Pass(Counter::PassUnsupportedProto)),
    };

    Ok(Parsed::Packet(Packet {
        proto,
        src_addr,
        dst_addr,
        src_port,
        dst_port,
        icmp_type,
        l4,
    }))
}
