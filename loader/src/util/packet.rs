//! Building and checking IPv4 frames (and a plain IPv6 UDP frame): the crafted-packet tests
//! and `bpfnat profile`.
//!
//! Checksums here are computed from scratch by plain RFC 1071 arithmetic, independent of the
//! kernel's incremental helpers the datapath uses: a test that compares the datapath's output
//! with a frame built here checks the datapath's checksum work against an independent oracle.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_HLEN: usize = 14;

/// One's-complement sum of 16-bit big-endian words (RFC 1071), not yet inverted.
pub fn ones_complement_sum(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` (the value to put in a checksum field).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(ones_complement_sum(data, 0))
}

fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: usize) -> u32 {
    let mut ph = Vec::with_capacity(12);
    ph.extend_from_slice(&src.octets());
    ph.extend_from_slice(&dst.octets());
    ph.push(0);
    ph.push(proto);
    ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
    ones_complement_sum(&ph, 0)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// `kind` 8 = echo request, 0 = echo reply.
    IcmpEcho {
        kind: u8,
        id: u16,
        seq: u16,
    },
    /// An ICMP error (`kind` 3, 11, 12) with its 4 "rest of header" bytes and a quoted
    /// packet (IP header onwards, possibly truncated).
    IcmpError {
        kind: u8,
        code: u8,
        rest: u32,
        quote: Vec<u8>,
    },
    /// No L4 header (a non-first fragment): the payload follows the IP header directly.
    Raw {
        proto: u8,
    },
}

/// A frame description; `build` turns it into bytes with correct checksums.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 options (length must be a multiple of 4, at most 40).
    pub ip_options: Vec<u8>,
    pub ip_id: u16,
    pub ttl: u8,
    /// UDP: send with checksum 0 ("no checksum").
    pub udp_no_checksum: bool,
    /// Fragment offset in 8-byte units, and the more-fragments flag.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// TCP: sequence and acknowledgement numbers.
    pub tcp_seq: u32,
    pub tcp_ack: u32,
}

impl Frame {
    pub fn new(src: &str, dst: &str, l4: L4) -> Self {
        Self {
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
            l4,
            payload: b"bpfnat crafted payload".to_vec(),
            ip_options: Vec::new(),
            ip_id: 0x1234,
            ttl: 63,
            udp_no_checksum: false,
            frag_offset: 0,
            more_fragments: false,
            tcp_seq: 0x0102_0304,
            tcp_ack: 0,
        }
    }

    /// The IP packet (no Ethernet header), e.g. to quote in an ICMP error.
    pub fn ip_bytes(&self) -> Vec<u8> {
        self.build()[ETH_HLEN..].to_vec()
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::IcmpEcho { .. } | L4::IcmpError { .. } => 1,
            L4::Raw { proto } => proto,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = match self.l4.clone() {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&self.tcp_seq.to_be_bytes());
                h[8..12].copy_from_slice(&self.tcp_ack.to_be_bytes());
                h[12] = 5 << 4; // data offset
                h[13] = flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
                h
            }
            L4::Udp { sport, dport } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h
            }
            L4::IcmpEcho { kind, id, seq } => {
                let mut h = vec![0u8; 8];
                h[0] = kind;
                h[4..6].copy_from_slice(&id.to_be_bytes());
                h[6..8].copy_from_slice(&seq.to_be_bytes());
                h
            }
            L4::IcmpError {
                kind,
                code,
                rest,
                quote,
            } => {
                let mut h = vec![kind, code, 0, 0];
                h.extend_from_slice(&rest.to_be_bytes());
                h.extend_from_slice(&quote);
                h
            }
            L4::Raw { .. } => Vec::new(),
        };
        if !matches!(self.l4, L4::IcmpError { .. }) {
            l4.extend_from_slice(&self.payload);
        }
        let csum_off = match self.l4 {
            L4::Tcp { .. } => 16,
            L4::Udp { .. } => 6,
            L4::IcmpEcho { .. } | L4::IcmpError { .. } => 2,
            L4::Raw { .. } => usize::MAX,
        };
        let csum = match self.l4 {
            L4::Raw { .. } => 0,
            L4::IcmpEcho { .. } | L4::IcmpError { .. } => checksum(&l4),
            L4::Udp { .. } if self.udp_no_checksum => 0,
            _ => {
                let sum = pseudo_header_sum(self.src, self.dst, self.proto(), l4.len());
                let c = !fold(ones_complement_sum(&l4, sum));
                // UDP transmits a computed zero as 0xffff (zero means "no checksum").
                if c == 0 && matches!(self.l4, L4::Udp { .. }) {
                    0xffff
                } else {
                    c
                }
            }
        };
        if csum_off != usize::MAX {
            l4[csum_off..csum_off + 2].copy_from_slice(&csum.to_be_bytes());
        }

        assert!(self.ip_options.len().is_multiple_of(4) && self.ip_options.len() <= 40);
        let ihl = 20 + self.ip_options.len();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        let flags_offset: u16 = if self.frag_offset != 0 || self.more_fragments {
            (if self.more_fragments { 0x2000 } else { 0 }) | self.frag_offset
        } else {
            0x4000 // DF
        };
        ip[6..8].copy_from_slice(&flags_offset.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = self.proto();
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.ip_options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_HLEN + ip.len() + l4.len());
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// Check every checksum of an IPv4 frame from scratch; returns a description of the first
/// bad one.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let ip = &frame[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if fold(ones_complement_sum(&ip[..ihl], 0)) != 0xffff {
        return Err("bad IPv4 header checksum".into());
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..total];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    match ip[9] {
        1 => (fold(ones_complement_sum(l4, 0)) == 0xffff)
            .then_some(())
            .ok_or("bad ICMP checksum".into()),
        6 | 17 => {
            if ip[9] == 17 && l4[6] == 0 && l4[7] == 0 {
                return Ok(()); // UDP without checksum
            }
            let sum = pseudo_header_sum(src, dst, ip[9], l4.len());
            (fold(ones_complement_sum(l4, sum)) == 0xffff)
                .then_some(())
                .ok_or(format!("bad L4 checksum (proto {})", ip[9]))
        }
        _ => Ok(()),
    }
}

/// An Ethernet + IPv6 + UDP frame with no extension header and a full, correct checksum
/// (pseudo-header with both 128-bit addresses, RFC 8200 section 8.1); MACs zero.
pub fn udp6_frame(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    let sum = !fold(ones_complement_sum(&udp, ones_complement_sum(&pseudo, 0)));
    // Zero is "no checksum", which IPv6 forbids for UDP: sent as all ones.
    let sum = if sum == 0 { 0xffff } else { sum };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());

    let mut frame = vec![0u8; ETH_HLEN];
    frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
    frame.push(17);
    frame.push(hop_limit);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&udp);
    frame
}
