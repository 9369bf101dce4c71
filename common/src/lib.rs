//! Types shared by the eBPF datapath and the userspace loader.
//!
//! Every type here crosses the kernel/user boundary as raw bytes in a BPF map, so each one is
//! `#[repr(C)]`, has explicit padding fields (no implicit padding: `bytemuck::Pod` checks it on
//! the user side) and only plain integer fields.
//!
//! Byte order: addresses and ports are stored exactly as they appear on the wire (network byte
//! order), read into the integer with native order (`u32::from_ne_bytes(wire)`). The datapath
//! can then compare and copy them without swapping; userspace converts with
//! [`FlowKey::src_ip`] and friends.
#![no_std]

/// IP protocol numbers the datapath translates.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Default size of each connection-tracking map: the kernel's `nf_conntrack_max` on a 64-bit
/// host with more than 4 GiB of memory.
pub const DEFAULT_TABLE_SIZE: u32 = 262_144;

/// How many random ports the datapath tries after the original port is taken. MASQUERADE
/// tries up to 128 + 64 + 32 + 16; a BPF loop must stay small enough for the verifier and
/// cheap on the packet path, and with random probing 64 tries find a free port in a range that
/// is up to ~93 % full with probability 1 - 0.93^64 > 99 %.
pub const PORT_ALLOC_TRIES: u32 = 64;

/// One direction of a connection as the packet carries it.
///
/// For ICMP echo the identifier plays the role of a port: an echo request is keyed with
/// `src_port = id, dst_port = 0`, its reply with `src_port = 0, dst_port = id`, so that the
/// reply key is the request key with source and destination swapped, exactly as for TCP/UDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

impl FlowKey {
    #[inline(always)]
    pub const fn new(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> Self {
        Self {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            proto,
            pad: [0; 3],
        }
    }

    /// The key of the opposite direction.
    #[inline(always)]
    pub const fn reversed(&self) -> Self {
        Self::new(
            self.dst_addr,
            self.src_addr,
            self.dst_port,
            self.src_port,
            self.proto,
        )
    }
}

/// Entry flag: this is the original (container -> outside) direction of a mapping.
pub const NAT_FLAG_ORIGINAL: u8 = 1 << 0;
/// Entry flag: the external port differs from the original one (a port was allocated).
pub const NAT_FLAG_PORT_REMAPPED: u8 = 1 << 1;

/// Value of a connection-tracking entry: where to rewrite this direction's packets to, plus
/// liveness and accounting for that direction.
///
/// In the egress map (key = original tuple) `addr`/`port` are the external source address and
/// port; in the ingress map (key = reply tuple) they are the internal destination address and
/// port. Counters are updated with atomic adds by every CPU that sees the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatEntry {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet in this direction.
    pub last_seen_ns: u64,
    /// When the mapping was created (CLOCK_MONOTONIC ns).
    pub created_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Address to write (network byte order).
    pub addr: u32,
    /// Port or ICMP identifier to write (network byte order).
    pub port: u16,
    /// `NAT_FLAG_*` bits.
    pub flags: u8,
    /// Reserved for connection state (TCP state machine); 0 today.
    pub state: u8,
}

/// Runtime configuration of the datapath, stored at index 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatConfig {
    /// The uplink's IPv4 address (network byte order); 0 = not known yet, translate nothing.
    pub external_addr: u32,
    /// Explicit port range for TCP/UDP (host byte order). `port_min == 0` selects
    /// MASQUERADE's classes: <512 -> 1-511, 512-1023 -> 600-1023, >=1024 -> 1024-65535.
    pub port_min: u16,
    pub port_max: u16,
    /// Reserved for feature flags; 0 today.
    pub flags: u32,
    pub pad: u32,
}

/// Indexes of the per-CPU `COUNTERS` array. Every verdict the datapath takes bumps exactly one
/// `Drop*` or `Pass*`/`Translated*` counter, so the sum explains every packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets seen by the uplink egress program.
    EgressPackets = 0,
    /// Egress packets rewritten (source address/port).
    EgressTranslated,
    /// Ingress packets seen by the uplink ingress program.
    IngressPackets,
    /// Ingress packets rewritten (destination address/port).
    IngressTranslated,
    /// Mappings created.
    NewMappings,
    /// Extra ports tried because the preferred one was taken.
    PortRetries,
    /// Packets passed untouched: not IPv4 (ARP, IPv6, ...).
    PassNotIpv4,
    /// Packets passed untouched: source/destination not ours to translate.
    PassNoMatch,
    /// Packets passed untouched: a protocol the NAT does not handle (or ICMP not echo).
    PassUnsupportedProto,
    /// Non-first IP fragments passed untouched (they carry no ports).
    PassFragment,
    /// Dropped: no free external port for this destination.
    DropNoPort,
    /// Dropped: connection table full.
    DropTableFull,
    /// Dropped: header truncated or inconsistent.
    DropMalformed,
    /// Dropped: a helper that rewrites the packet failed.
    DropRewriteFailed,
    /// Number of counters; keep last.
    Count,
}

impl Counter {
    pub const ALL: [Counter; Counter::Count as usize] = [
        Counter::EgressPackets,
        Counter::EgressTranslated,
        Counter::IngressPackets,
        Counter::IngressTranslated,
        Counter::NewMappings,
        Counter::PortRetries,
        Counter::PassNotIpv4,
        Counter::PassNoMatch,
        Counter::PassUnsupportedProto,
        Counter::PassFragment,
        Counter::DropNoPort,
        Counter::DropTableFull,
        Counter::DropMalformed,
        Counter::DropRewriteFailed,
    ];

    /// Stable snake_case name used by the CLI and JSON output.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::EgressPackets => "egress_packets",
            Counter::EgressTranslated => "egress_translated",
            Counter::IngressPackets => "ingress_packets",
            Counter::IngressTranslated => "ingress_translated",
            Counter::NewMappings => "new_mappings",
            Counter::PortRetries => "port_retries",
            Counter::PassNotIpv4 => "pass_not_ipv4",
            Counter::PassNoMatch => "pass_no_match",
            Counter::PassUnsupportedProto => "pass_unsupported_proto",
            Counter::PassFragment => "pass_fragment",
            Counter::DropNoPort => "drop_no_port",
            Counter::DropTableFull => "drop_table_full",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropRewriteFailed => "drop_rewrite_failed",
            Counter::Count => "count",
        }
    }
}

/// Names the loader and the datapath agree on.
pub mod names {
    pub const PROG_EGRESS: &str = "nat_egress";
    pub const PROG_INGRESS: &str = "nat_ingress";
    pub const MAP_NAT_OUT: &str = "NAT_OUT";
    pub const MAP_NAT_IN: &str = "NAT_IN";
    pub const MAP_CONFIG: &str = "CONFIG";
    /// LPM trie of internal (container) subnets: key prefix/address, value unused (0).
    pub const MAP_INTERNAL_NETS: &str = "INTERNAL_NETS";
    pub const MAP_COUNTERS: &str = "COUNTERS";
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    macro_rules! pod {
        ($($t:ty),*) => {$(
            // SAFETY: the type derives bytemuck::Pod, whose derive proves at compile time that
            // it is repr(C) with no padding and only Pod fields.
            unsafe impl aya::Pod for $t {}
        )*};
    }
    pod!(FlowKey, NatEntry, NatConfig);

    impl FlowKey {
        pub fn src_ip(&self) -> core::net::Ipv4Addr {
            core::net::Ipv4Addr::from(self.src_addr.to_ne_bytes())
        }
        pub fn dst_ip(&self) -> core::net::Ipv4Addr {
            core::net::Ipv4Addr::from(self.dst_addr.to_ne_bytes())
        }
        pub fn src_port_host(&self) -> u16 {
            u16::from_be(self.src_port)
        }
        pub fn dst_port_host(&self) -> u16 {
            u16::from_be(self.dst_port)
        }
    }
}

/// Convert an address to the in-map representation (wire bytes read natively).
#[inline(always)]
pub const fn addr_to_map(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Convert a host-order port to the in-map representation.
#[inline(always)]
pub const fn port_to_map(port: u16) -> u16 {
    port.to_be()
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn sizes_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<NatEntry>(), 40);
        assert_eq!(size_of::<NatConfig>(), 16);
    }

    #[test]
    fn reversed_key_swaps_both_ends() {
        let k = FlowKey::new(1, 2, 3, 4, IPPROTO_TCP);
        assert_eq!(k.reversed(), FlowKey::new(2, 1, 4, 3, IPPROTO_TCP));
        assert_eq!(k.reversed().reversed(), k);
    }

    #[test]
    fn counter_table_is_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_ne!(c.name(), "count");
        }
    }
}
