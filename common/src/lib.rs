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

#[cfg(feature = "syscall")]
pub mod batch;

/// IP protocol numbers the datapath translates.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Protocols with TCP/UDP-like ports at the start of their header (translated with ports).
pub const IPPROTO_DCCP: u8 = 33;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;
/// ICMP for IPv6 (echo as a flow, like ICMP echo; its checksum covers a pseudo-header).
pub const IPPROTO_ICMPV6: u8 = 58;

/// Wire and kernel constants that the datapath, the loader, the bench and the tests all use
/// (the datapath takes the `TC_ACT_*` and `BPF_*` ones from aya's kernel bindings).
pub mod wire {
    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_IPV6: u16 = 0x86dd;

    /// IPv6 extension headers the parser walks past (RFC 8200 section 4), and "no next
    /// header".
    pub const IPV6_HOPOPTS: u8 = 0;
    pub const IPV6_ROUTING: u8 = 43;
    pub const IPV6_FRAGMENT: u8 = 44;
    pub const IPV6_DSTOPTS: u8 = 60;
    pub const IPV6_NONE: u8 = 59;

    pub const ICMPV6_DEST_UNREACH: u8 = 1;
    pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
    pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
    pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
    pub const ICMPV6_ECHO_REQUEST: u8 = 128;
    pub const ICMPV6_ECHO_REPLY: u8 = 129;

    pub const ICMP_ECHO_REPLY: u8 = 0;
    pub const ICMP_DEST_UNREACH: u8 = 3;
    pub const ICMP_ECHO_REQUEST: u8 = 8;
    pub const ICMP_TIME_EXCEEDED: u8 = 11;
    pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

    /// TCP header flags.
    pub const TCP_FIN: u8 = 0x01;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_RST: u8 = 0x04;
    pub const TCP_PSH: u8 = 0x08;
    pub const TCP_ACK: u8 = 0x10;
    pub const TCP_URG: u8 = 0x20;
    pub const TCP_ECE: u8 = 0x40;
    pub const TCP_CWR: u8 = 0x80;

    /// Whether a TCP segment's flags are a combination a TCP sends, as nf_conntrack's
    /// `tcp_valid_flags` judges them (PSH, ECE and CWR aside). Anything else (no flag at all,
    /// SYN with FIN, ...) is never tracked nor translated.
    #[inline(always)]
    pub const fn valid_tcp_flags(flags: u8) -> bool {
        matches!(
            flags & !(TCP_PSH | TCP_ECE | TCP_CWR),
            TCP_SYN
                | 0x22 // SYN|URG
                | 0x12 // SYN|ACK
                | TCP_RST
                | 0x14 // RST|ACK
                | 0x11 // FIN|ACK
                | 0x31 // FIN|ACK|URG
                | TCP_ACK
                | 0x30 // ACK|URG
        )
    }

    /// Whether a segment opens a connection: SYN without ACK, RST or FIN.
    #[inline(always)]
    pub const fn opens_connection(flags: u8) -> bool {
        flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
    }

    /// A TC program's verdicts (what BPF_PROG_TEST_RUN reports as its return value).
    /// `TCX_NEXT` (`TC_ACT_UNSPEC`, -1): the packet goes on to the next program or tc filter on
    /// the hook, else on its way; every verdict of the datapath that lets a packet continue.
    pub const TCX_NEXT: u32 = u32::MAX;
    /// A final pass: the programs and filters after it on the hook do not see the packet.
    pub const TC_ACT_OK: u32 = 0;
    pub const TC_ACT_SHOT: u32 = 2;
    pub const TC_ACT_REDIRECT: u32 = 7;

    /// Map update flags.
    pub const BPF_ANY: u64 = 0;
    pub const BPF_NOEXIST: u64 = 1;
}

/// Default size of each connection-tracking map: the kernel's `nf_conntrack_max` on a 64-bit
/// host with more than 4 GiB of memory.
pub const DEFAULT_TABLE_SIZE: u32 = 262_144;

/// Slots of the `EMBRYONIC` ring for a table of `table_size` mappings: a quarter of the table,
/// rounded down to a power of two (at least 16). Connections opened from outside and never
/// answered can hold at most this many entries, so a flood of them leaves three quarters of
/// the table to everything else.
pub const fn embryonic_slots(table_size: u32) -> u32 {
    let quarter = table_size / 4;
    if quarter < 16 {
        return 16;
    }
    1 << (31 - quarter.leading_zeros())
}

/// How many ports the datapath tries, walking the range from a random offset, after the
/// original port is taken: MASQUERADE's first round (it then tries 64, 32, 16 more from new
/// offsets). A range of up to 128 ports is searched exhaustively.
pub const PORT_ALLOC_TRIES: u32 = 128;

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
    // Two fields rather than `[u8; 3]`: the BPF backend zeroes a 3-byte array with a call to
    // a byte-by-byte `memset` subprogram on every key built in the packet path.
    pub pad: u8,
    pub pad2: u16,
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
            pad: 0,
            pad2: 0,
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

    /// For an original-direction key (`NAT_OUT`), the key its replies arrive with (`NAT_IN`):
    /// from the remote to the external address and port in `out`.
    #[inline(always)]
    pub const fn reply_key(&self, out: &NatEntry) -> Self {
        Self::new(self.dst_addr, out.addr, self.dst_port, out.port, self.proto)
    }

    /// For a reply-direction key (`NAT_IN`), the original key (`NAT_OUT`): from the internal
    /// address and port in `inbound` to the remote.
    #[inline(always)]
    pub const fn original_key(&self, inbound: &NatEntry) -> Self {
        Self::new(
            inbound.addr,
            self.src_addr,
            inbound.port,
            self.src_port,
            self.proto,
        )
    }
}

/// An IPv6 address as the maps hold it: its 16 wire bytes as four native-order words.
pub const fn addr6_to_map(octets: [u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        out[i] = u32::from_ne_bytes([
            octets[i * 4],
            octets[i * 4 + 1],
            octets[i * 4 + 2],
            octets[i * 4 + 3],
        ]);
        i += 1;
    }
    out
}

/// The wire bytes of a map's IPv6 address.
pub const fn addr6_from_map(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

/// One direction of an IPv6 connection as the packet carries it: [`FlowKey`] with 128-bit
/// addresses, each four 32-bit words as they are on the wire. ICMPv6 echo is keyed like ICMP
/// echo (the identifier as the request's source "port").
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKey6 {
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub pad: u8,
    pub pad2: u16,
}

impl FlowKey6 {
    #[inline(always)]
    pub const fn new(
        src_addr: [u32; 4],
        dst_addr: [u32; 4],
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
            pad: 0,
            pad2: 0,
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

    /// For an original-direction key (`NAT6_OUT`), the key its replies arrive with.
    #[inline(always)]
    pub const fn reply_key(&self, out: &NatEntry6) -> Self {
        Self::new(
            self.dst_addr,
            out.addr,
            self.dst_port,
            out.entry.port,
            self.proto,
        )
    }

    /// For a reply-direction key (`NAT6_IN`), the original key.
    #[inline(always)]
    pub const fn original_key(&self, inbound: &NatEntry6) -> Self {
        Self::new(
            inbound.addr,
            self.src_addr,
            inbound.entry.port,
            self.src_port,
            self.proto,
        )
    }
}

/// One half of an IPv6 mapping: the state an IPv4 half keeps ([`NatEntry`]: times,
/// accounting, port, flags, TCP tracking; its `addr` unused, 0), and the IPv6 address to
/// write. The IPv4 part comes first, so the datapath's and the loader's code for it serves
/// both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatEntry6 {
    pub entry: NatEntry,
    /// Address to write (network byte order words).
    pub addr: [u32; 4],
}

/// Entry flag: this is the original (container -> outside) direction of a mapping.
pub const NAT_FLAG_ORIGINAL: u8 = 1 << 0;
/// Entry flag: the external port differs from the original one (a port was allocated).
pub const NAT_FLAG_PORT_REMAPPED: u8 = 1 << 1;
/// Entry flag: the connection came in through a published port (the outside initiated it;
/// `NAT_IN` holds the initiator's direction).
pub const NAT_FLAG_PUBLISHED: u8 = 1 << 2;

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
    /// TCP only: `TCP_SEEN_*` bits of what this direction has sent since the mapping was
    /// (re)opened. The connection state is derived from both directions' bits
    /// ([`tcp_state`]).
    pub tcp_flags: u8,
    /// TCP only (valid with `TCP_SEEN_SEQ`): the sequence number after the last byte (SYN
    /// and FIN included) this direction has sent, host order.
    pub seq_end: u32,
    /// TCP only (valid with `TCP_SEEN_ACK`): the highest acknowledgement number this
    /// direction has sent, host order. With the other direction's `seq_end` it bounds the
    /// sequence numbers a RST or FIN of the other direction can carry.
    pub max_ack: u32,
}

/// `NatEntry::tcp_flags`: this direction sent a FIN (same bit as in the TCP header).
pub const TCP_SEEN_FIN: u8 = 0x01;
/// This direction sent a SYN.
pub const TCP_SEEN_SYN: u8 = 0x02;
/// This direction sent a RST.
pub const TCP_SEEN_RST: u8 = 0x04;
/// This direction sent a segment with ACK set.
pub const TCP_SEEN_ACK: u8 = 0x10;
/// The other direction has sent a FIN (written into this entry by the other direction's FIN).
pub const TCP_SEEN_PEER_FIN: u8 = 0x20;
/// This direction sent an ACK after the other direction's FIN.
pub const TCP_SEEN_ACKED_PEER_FIN: u8 = 0x40;
/// `seq_end` holds this direction's sequence space.
pub const TCP_SEEN_SEQ: u8 = 0x80;

/// TCP connection states, named as nf_conntrack names them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
}

impl TcpState {
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }

    /// Whether a new SYN from the original side may reopen the mapping (the kernel reuses
    /// TIME_WAIT/CLOSE entries the same way).
    pub const fn reusable(self) -> bool {
        matches!(self, TcpState::TimeWait | TcpState::Close)
    }
}

/// The state of a TCP connection from what each direction has sent (`NatEntry::tcp_flags`
/// of the original and of the reply half).
pub const fn tcp_state(original: u8, reply: u8) -> TcpState {
    const fn has(flags: u8, bit: u8) -> bool {
        flags & bit != 0
    }
    if has(original | reply, TCP_SEEN_RST) {
        return TcpState::Close;
    }
    let (o_fin, r_fin) = (has(original, TCP_SEEN_FIN), has(reply, TCP_SEEN_FIN));
    if o_fin && r_fin {
        // Both sides closed; TIME_WAIT once each has acknowledged the other's FIN.
        if has(original, TCP_SEEN_ACKED_PEER_FIN) && has(reply, TCP_SEEN_ACKED_PEER_FIN) {
            return TcpState::TimeWait;
        }
        return TcpState::LastAck;
    }
    if o_fin || r_fin {
        let other = if o_fin { reply } else { original };
        if has(other, TCP_SEEN_ACKED_PEER_FIN) {
            return TcpState::CloseWait;
        }
        return TcpState::FinWait;
    }
    if has(reply, TCP_SEEN_SYN) && !has(original, TCP_SEEN_ACK) {
        return TcpState::SynRecv;
    }
    if has(original, TCP_SEEN_SYN) && !has(original, TCP_SEEN_ACK) && reply == 0 {
        return TcpState::SynSent;
    }
    // Handshake done, or a connection picked up mid-stream (no SYN seen).
    TcpState::Established
}

/// Idle timeouts in seconds, per state; stored in the configuration so every tool reading
/// the instance (expiry, `conntrack list`) uses the same values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    /// UDP flow seen in one direction only.
    pub udp_one_way: u32,
    /// UDP flow with replies.
    pub udp_both_ways: u32,
    pub icmp: u32,
    pub generic: u32,
    /// A TCP mapping whose other side has never answered (a mid-stream pickup): at most
    /// this long, whatever its state says (nf_conntrack's `tcp_timeout_unacknowledged`).
    pub tcp_unacknowledged: u32,
}

impl Timeouts {
    /// The kernel's defaults (`Documentation/networking/nf_conntrack-sysctl.rst`).
    pub const KERNEL: Timeouts = Timeouts {
        tcp_syn_sent: 120,
        tcp_syn_recv: 60,
        tcp_established: 432_000,
        tcp_fin_wait: 120,
        tcp_close_wait: 60,
        tcp_last_ack: 30,
        tcp_time_wait: 120,
        tcp_close: 10,
        udp_one_way: 30,
        udp_both_ways: 120,
        icmp: 30,
        generic: 600,
        tcp_unacknowledged: 300,
    };

    pub const fn tcp(&self, state: TcpState) -> u32 {
        match state {
            TcpState::SynSent => self.tcp_syn_sent,
            TcpState::SynRecv => self.tcp_syn_recv,
            TcpState::Established => self.tcp_established,
            TcpState::FinWait => self.tcp_fin_wait,
            TcpState::CloseWait => self.tcp_close_wait,
            TcpState::LastAck => self.tcp_last_ack,
            TcpState::TimeWait => self.tcp_time_wait,
            TcpState::Close => self.tcp_close,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::KERNEL
    }
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
    /// The uplink's interface index: where the bridge-port program sends routed traffic.
    pub uplink_ifindex: u32,
    /// Idle timeouts; read by userspace (expiry, `conntrack list`), not by the datapath.
    pub timeouts: Timeouts,
    /// Slots of the `EMBRYONIC` ring (a power of two; 0: no limit): at most this many
    /// connections opened from outside that have not been answered (not assured) hold
    /// entries; a new one evicts the oldest such (early drop).
    pub embryonic_slots: u32,
    /// The uplink's global IPv6 address (network order words); all zero = none, translate no
    /// IPv6.
    pub external_addr6: [u32; 4],
}

/// Declares the counters once: the enum, `Counter::ALL` in index order and each counter's
/// name come from this one list.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Indexes of the per-CPU `COUNTERS` array. Every verdict the datapath takes bumps
        /// exactly one `Drop*` or `Pass*`/`Translated*` counter, so the sum explains every
        /// packet.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
            /// Number of counters; keep last.
            Count,
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: [Counter; Counter::Count as usize] = [$(Counter::$variant,)*];

            /// Stable snake_case name used by the CLI, JSON and metrics output.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                    Counter::Count => "count",
                }
            }
        }
    };
}

counters! {
    /// Packets seen by the uplink egress program.
    EgressPackets => "egress_packets",
    /// Egress packets rewritten (source address/port).
    EgressTranslated => "egress_translated",
    /// Ingress packets seen by the uplink ingress program.
    IngressPackets => "ingress_packets",
    /// Ingress packets rewritten (destination address/port).
    IngressTranslated => "ingress_translated",
    /// Mappings created.
    NewMappings => "new_mappings",
    /// Extra ports tried because the preferred one was taken.
    PortRetries => "port_retries",
    /// Packets passed untouched: not IPv4 (ARP, IPv6, ...).
    PassNotIpv4 => "pass_not_ipv4",
    /// Packets passed untouched: source/destination not ours to translate.
    PassNoMatch => "pass_no_match",
    /// Packets passed untouched: a protocol the NAT does not handle (or ICMP not echo).
    PassUnsupportedProto => "pass_unsupported_proto",
    /// Non-first IP fragments passed untouched (they carry no ports).
    PassFragment => "pass_fragment",
    /// Dropped: no free external port for this destination.
    DropNoPort => "drop_no_port",
    /// Dropped: connection table full.
    DropTableFull => "drop_table_full",
    /// Dropped: header truncated or inconsistent.
    DropMalformed => "drop_malformed",
    /// Dropped: a helper that rewrites the packet failed.
    DropRewriteFailed => "drop_rewrite_failed",
    /// ICMP errors about a translated flow, translated (either direction).
    IcmpErrorsTranslated => "icmp_errors_translated",
    /// Non-first fragments translated by the flow their first fragment set up.
    FragmentsTranslated => "fragments_translated",
    /// Dropped: a non-first fragment from an internal host whose first fragment was not seen.
    DropFragmentUnknown => "drop_fragment_unknown",
    /// Dropped: a mid-stream TCP segment to the uplink address that matches no mapping and
    /// no local socket (instead of letting the host answer it with a RST, which would kill a
    /// connection whose mapping is about to be picked up again).
    DropStrayTcp => "drop_stray_tcp",
    /// TCP mappings in TIME_WAIT/CLOSE reopened by a new SYN.
    TcpReopened => "tcp_reopened",
    /// Packets seen by the bridge-port program (frames from containers).
    PortPackets => "port_packets",
    /// Packets the datapath forwarded itself (redirect), bypassing the host's FORWARD path.
    Forwarded => "forwarded",
    /// Published-port mappings created (inbound connections to a container).
    PublishedMappings => "published_mappings",
    /// Dropped: unsolicited packet from outside to a container address (direct access).
    DropDirectAccess => "drop_direct_access",
    /// Dropped: container-to-container traffic on a bridge with inter-container traffic off.
    DropIcc => "drop_icc",
    /// Dropped: traffic between two bridges.
    DropIsolation => "drop_isolation",
    /// Dropped: traffic leaving an internal bridge.
    DropInternal => "drop_internal",
    /// Packets of hairpin connections translated (container -> host address -> container).
    HairpinTranslated => "hairpin_translated",
    /// Ports not given to a container because a socket of the host uses them (for that
    /// peer, or bound to the port).
    PortHostOwned => "port_host_owned",
    /// Dropped: a TCP segment whose flags no TCP sends (none at all, SYN with FIN, ...).
    DropInvalidTcp => "drop_invalid_tcp",
    /// Connections from outside that were never answered, evicted to make room for new
    /// ones (early drop).
    EarlyDrops => "early_drops",
    /// Dropped: a packet from a container that cannot be translated (an ICMP message other
    /// than echo and errors about its flows) and would leave with its internal address.
    DropUntranslatable => "drop_untranslatable",
    /// Dropped: a container's packet (or ARP) from a source address that is not its own:
    /// outside its bridge's subnets, the gateway's, another container's, or (on a port whose
    /// addresses the loader knows) any address not assigned to it.
    DropSpoofed => "drop_spoofed",
    /// Dropped: a TCP RST outside the connection's window (a blind reset: only a sequence
    /// number between what the other side acknowledged and what the sender sent closes a
    /// connection).
    DropTcpWindow => "drop_tcp_window",
    /// TCP FINs outside the window: forwarded, but the connection's state is left alone.
    TcpFinIgnored => "tcp_fin_ignored",
    /// Dropped: a packet for a container whose TTL ran out at the host (the host's ICMP
    /// time-exceeded would quote the container's address to the sender).
    DropTtlExceeded => "drop_ttl_exceeded",
    /// The host's own flows given another port because a container's mapping already held
    /// their reply tuple (the host chose the port without knowing of the mapping).
    HostFlowsRemapped => "host_flows_remapped",
    /// Packets of a bridge with masquerade off (Docker's `enable_ip_masquerade=false`)
    /// passed untranslated: the host routes them with the containers' own addresses.
    PassNotMasqueraded => "pass_not_masqueraded",
}

/// Key of the fragment table: the datagram a non-first fragment belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    /// IP identification, network byte order.
    pub id: u16,
    pub proto: u8,
    /// 0: leaving through the uplink (source rewritten), 1: arriving (destination rewritten).
    pub direction: u8,
}

/// Key of the IPv6 fragment table: the datagram a later fragment belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragKey6 {
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    /// The fragment header's identification, network byte order.
    pub id: u32,
    pub proto: u8,
    /// As in [`FragKey`].
    pub direction: u8,
    pub pad: u16,
}

/// Value of the IPv6 fragment table: the address the datagram's fragments get.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragEntry6 {
    pub created_ns: u64,
    pub addr: [u32; 4],
}

/// How long after its first fragment a datagram's later fragments are still translated: the
/// kernel's reassembly timeout (`net.ipv4.ipfrag_time`, 30 s). Past it the reassembly has been
/// given up anyway, and an old entry would hand a new datagram that reuses the IP id (and
/// addresses and protocol) to the old one's address.
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

/// One slot of the `EMBRYONIC` ring: a connection opened from outside (its `NAT_IN` key)
/// and when its mapping was created, which tells it from a later mapping of the same tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EmbryonicSlot {
    pub key: FlowKey,
    /// `created_ns` of the mapping; 0: an empty slot.
    pub created_ns: u64,
}

/// One slot of the `EMBRYONIC6` ring: as [`EmbryonicSlot`], for an IPv6 connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EmbryonicSlot6 {
    pub key: FlowKey6,
    pub created_ns: u64,
}

/// Value of the fragment table: the address the datagram's fragments get.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragEntry {
    /// When the first fragment was seen (CLOCK_MONOTONIC ns).
    pub created_ns: u64,
    /// Address to write, network byte order.
    pub addr: u32,
    pub pad: u32,
}

/// A container on a bridge port: assigned by the loader (the address configured on the
/// container's end of the port's veth), or learned by the datapath from the frames a port
/// without assigned addresses sends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Endpoint {
    /// The host-side interface (bridge port) the container is behind.
    pub port_ifindex: u32,
    pub mac: [u8; 6],
    /// `ENDPOINT_*` bits.
    pub flags: u8,
    pub pad: u8,
}

/// Endpoint flag: written by the loader from the address configured on the container's
/// veth, which a container cannot forge; never replaced by what the datapath learns.
pub const ENDPOINT_ASSIGNED: u8 = 1 << 0;

/// Bridge flag: inter-container traffic off (`--icc=false`).
pub const BRIDGE_ICC_OFF: u32 = 1 << 0;
/// Bridge flag: internal network: no traffic leaves the subnet, no masquerade.
pub const BRIDGE_INTERNAL: u32 = 1 << 1;
/// Bridge flag: masquerade off (Docker's `com.docker.network.bridge.enable_ip_masquerade=
/// false`): its containers' traffic is routed with their own addresses, untranslated; from
/// outside, only a new TCP connection is refused (what else arrives is the host firewall's).
pub const BRIDGE_NO_MASQUERADE: u32 = 1 << 2;

/// A bridge the datapath serves, keyed by its interface index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BridgeInfo {
    /// The bridge's own (gateway) address, network byte order.
    pub gateway: u32,
    /// `BRIDGE_*` flags.
    pub flags: u32,
    pub mac: [u8; 6],
    pub pad: [u8; 2],
    /// Its own global IPv6 address in its IPv6 subnets (all zero: none).
    pub gateway6: [u32; 4],
}

/// Key of the IPv6 published-port table (`PUBLISH6`): ports published on the uplink's IPv6
/// address (Docker's `-p [::]:HOST_PORT:...`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PublishKey6 {
    /// Host port, network order.
    pub host_port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// Where an IPv6 published port leads: a container's IPv6 address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PublishTarget6 {
    /// Container address, network order words.
    pub addr: [u32; 4],
    /// Container port, network order.
    pub port: u16,
    pub pad: u16,
}

/// Key of the published-port table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PublishKey {
    /// Host address the port is published on (network order); 0 = the external address.
    pub host_addr: u32,
    /// Host port, network order.
    pub host_port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// Where a published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PublishTarget {
    /// Container address, network order.
    pub addr: u32,
    /// Container port, network order.
    pub port: u16,
    pub pad: u16,
}

/// One direction of a hairpin connection (a container reaching a published port through the
/// host's own address): the full tuple the packet is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct HairpinEntry {
    /// CLOCK_MONOTONIC ns of the last packet.
    pub last_seen_ns: u64,
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP: the FIN and RST flags (as in the header) this direction has sent, for expiry.
    pub tcp_flags: u8,
    /// Padding as a 1- and a 2-byte field: a 3-byte array compiles to a `memset` call in
    /// the datapath.
    pub pad: u8,
    pub pad2: u16,
}

impl HairpinEntry {
    /// The other direction's key: the tuple this entry rewrites `key`'s packets to, reversed
    /// (the same for either direction).
    #[inline(always)]
    pub const fn partner(&self, key: &FlowKey) -> FlowKey {
        FlowKey::new(
            self.dst_addr,
            self.src_addr,
            self.dst_port,
            self.src_port,
            key.proto,
        )
    }
}

/// [`HairpinEntry`] with 128-bit addresses: one direction of an IPv6 hairpin connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct HairpinEntry6 {
    /// CLOCK_MONOTONIC ns of the last packet.
    pub last_seen_ns: u64,
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP: the FIN and RST flags (as in the header) this direction has sent, for expiry.
    pub tcp_flags: u8,
    /// Padding as a 1- and a 2-byte field: a 3-byte array compiles to a `memset` call in
    /// the datapath.
    pub pad: u8,
    pub pad2: u16,
}

impl HairpinEntry6 {
    /// The other direction's key (see [`HairpinEntry::partner`]).
    #[inline(always)]
    pub const fn partner(&self, key: &FlowKey6) -> FlowKey6 {
        FlowKey6::new(
            self.dst_addr,
            self.src_addr,
            self.dst_port,
            self.src_port,
            key.proto,
        )
    }
}

/// Packets and bytes of one (hook, protocol) pair, in the per-CPU `TRAFFIC` array at index
/// `hook * TRAFFIC_PROTOS + protocol class` (`traffic_index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// Protocol classes of `TRAFFIC`: tcp, udp, icmp, other.
pub const TRAFFIC_PROTOS: u32 = 4;
/// Hooks of `TRAFFIC` (`HOOK_*`).
pub const TRAFFIC_HOOKS: u32 = 3;

/// Index into `TRAFFIC` for a hook and an IP protocol number.
#[inline(always)]
pub const fn traffic_index(hook: u8, proto: u8) -> u32 {
    let class = match proto {
        IPPROTO_TCP => 0,
        IPPROTO_UDP => 1,
        IPPROTO_ICMP => 2,
        _ => 3,
    };
    hook as u32 * TRAFFIC_PROTOS + class
}

/// Bytes of each traced packet copied into its event (enough for every header).
pub const TRACE_CAPTURE: usize = 128;
/// `TraceEvent::hook` values (and the hook index of `TRAFFIC`).
pub const HOOK_UPLINK_EGRESS: u8 = 0;
pub const HOOK_UPLINK_INGRESS: u8 = 1;
pub const HOOK_PORT_INGRESS: u8 = 2;
/// Every hook, in index order.
pub const HOOKS: [u8; TRAFFIC_HOOKS as usize] =
    [HOOK_UPLINK_EGRESS, HOOK_UPLINK_INGRESS, HOOK_PORT_INGRESS];

/// The name of a `HOOK_*` value in every output (trace, stats, metrics).
pub const fn hook_name(hook: u8) -> &'static str {
    match hook {
        HOOK_UPLINK_EGRESS => "uplink_egress",
        HOOK_UPLINK_INGRESS => "uplink_ingress",
        HOOK_PORT_INGRESS => "port_ingress",
        _ => "unknown",
    }
}
/// `TraceEvent::reason` when the packet was not dropped.
pub const TRACE_NOT_DROPPED: u32 = u32::MAX;

/// `TraceEvent::family` and `TraceFilter::family`: the IP version.
pub const TRACE_IPV4: u8 = 4;
pub const TRACE_IPV6: u8 = 6;

/// Addresses and ports of a traced packet (network byte order; ICMP echo: the identifier in
/// both ports). An IPv4 address is the first word, the other three zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TraceTuple {
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
}

/// One traced packet, as the programs saw it before and after their work.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TraceEvent {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    pub ifindex: u32,
    /// Length of the packet on the wire (GSO packets: the whole burst).
    pub pkt_len: u32,
    /// Bytes of `data` that hold the packet's start.
    pub cap_len: u32,
    /// `HOOK_*`.
    pub hook: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    /// `TRACE_IPV4` or `TRACE_IPV6` (0: neither, no tuple).
    pub family: u8,
    /// The TC action taken (0 pass, 2 drop, 7 redirect).
    pub action: i32,
    /// The `Counter` of a drop, or `TRACE_NOT_DROPPED`.
    pub reason: u32,
    pub before: TraceTuple,
    pub after: TraceTuple,
    /// The packet's first bytes (Ethernet header on), after the program's rewrite.
    pub data: [u8; TRACE_CAPTURE],
}

/// What to trace (index 0 of `TRACE_FILTER`); a packet is traced if its tuple before or after
/// translation matches every set field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TraceFilter {
    /// 0: tracing off (the programs only read this word).
    pub enabled: u32,
    /// 0: any protocol.
    pub proto: u8,
    /// 0: either IP version; `TRACE_IPV4` or `TRACE_IPV6`: only that one (set with a network
    /// filter, whose addresses are of that version).
    pub family: u8,
    /// Either port, network order; 0: any.
    pub port: u16,
    /// Source network (network order, laid out as in `TraceTuple`) and mask; mask 0: any.
    pub src_addr: [u32; 4],
    pub src_mask: [u32; 4],
    pub dst_addr: [u32; 4],
    pub dst_mask: [u32; 4],
}

/// Names the loader and the datapath agree on.
pub mod names {
    pub const PROG_EGRESS: &str = "nat_egress";
    pub const PROG_INGRESS: &str = "nat_ingress";
    pub const MAP_NAT_OUT: &str = "NAT_OUT";
    pub const MAP_NAT_IN: &str = "NAT_IN";
    pub const MAP_CONFIG: &str = "CONFIG";
    /// LPM trie of internal (container) subnets: key prefix/address, value the ifindex of the
    /// subnet's bridge.
    pub const MAP_INTERNAL_NETS: &str = "INTERNAL_NETS";
    pub const MAP_COUNTERS: &str = "COUNTERS";
    /// LRU table of fragmented datagrams in flight.
    pub const MAP_FRAGS: &str = "FRAGS";
    /// Per-CPU packets and bytes by hook and protocol (`Traffic`, `traffic_index`).
    pub const MAP_TRAFFIC: &str = "TRAFFIC";
    /// Program on each bridge port's ingress (frames from containers).
    pub const PROG_PORT: &str = "port_ingress";
    /// Bridges served: bridge ifindex -> `BridgeInfo`.
    pub const MAP_BRIDGES: &str = "BRIDGES";
    /// Bridge ports: port ifindex -> bridge ifindex.
    pub const MAP_PORTS: &str = "PORTS";
    /// Containers seen: address -> `Endpoint` (learned by the datapath).
    pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
    /// Bridge ports whose addresses the loader knows: port ifindex -> how many (a port
    /// listed here may send only from those).
    pub const MAP_ASSIGNED_PORTS: &str = "ASSIGNED_PORTS";
    /// Published ports: `PublishKey` -> `PublishTarget`.
    pub const MAP_PUBLISH: &str = "PUBLISH";
    /// Hairpin connections, both directions: tuple as sent -> `HairpinEntry`.
    pub const MAP_HAIRPIN: &str = "HAIRPIN";
    /// IPv6 hairpin connections, both directions: tuple as sent (`FlowKey6`) ->
    /// `HairpinEntry6`.
    pub const MAP_HAIRPIN6: &str = "HAIRPIN6";
    /// The IPv6 hairpin program (`PROG_HAIRPIN6`), tail-called by `port_ingress6` for a
    /// packet to the host's own IPv6 address: a program array of one.
    pub const MAP_HAIRPIN6_PROG: &str = "HAIRPIN6_PROG";
    pub const PROG_HAIRPIN6: &str = "port_hairpin6";
    /// Ring of the connections opened from outside, for early drop: `EmbryonicSlot`s, and
    /// the next slot to use (array of one u64).
    pub const MAP_EMBRYONIC: &str = "EMBRYONIC";
    pub const MAP_EMBRYONIC_NEXT: &str = "EMBRYONIC_NEXT";
    /// Packet trace: filter (array of one `TraceFilter`) and events (ring buffer of
    /// `TraceEvent`).
    pub const MAP_TRACE_FILTER: &str = "TRACE_FILTER";
    pub const MAP_TRACE: &str = "TRACE";
    /// IPv6: the two connection tables (`FlowKey6` -> `NatEntry6`), the containers' subnets
    /// (LPM trie of 128-bit prefixes -> bridge ifindex), and the programs the IPv4 entry
    /// points tail-call for IPv6 frames (index [`IPV6_EGRESS`], [`IPV6_INGRESS`]).
    pub const MAP_NAT6_OUT: &str = "NAT6_OUT";
    pub const MAP_NAT6_IN: &str = "NAT6_IN";
    pub const MAP_INTERNAL_NETS6: &str = "INTERNAL_NETS6";
    pub const MAP_IPV6_PROGS: &str = "IPV6_PROGS";
    pub const PROG_EGRESS6: &str = "nat_egress6";
    pub const PROG_INGRESS6: &str = "nat_ingress6";
    pub const PROG_PORT6: &str = "port_ingress6";
    pub const IPV6_EGRESS: u32 = 0;
    pub const IPV6_INGRESS: u32 = 1;
    pub const IPV6_PORT: u32 = 2;
    /// Containers' IPv6 addresses seen on the ports: address -> `Endpoint`.
    pub const MAP_ENDPOINTS6: &str = "ENDPOINTS6";
    /// Bridge ports whose IPv6 addresses the loader knows: port ifindex -> how many.
    pub const MAP_ASSIGNED_PORTS6: &str = "ASSIGNED_PORTS6";
    /// IPv6 published ports: `PublishKey6` -> `PublishTarget6`.
    pub const MAP_PUBLISH6: &str = "PUBLISH6";
    /// The IPv6 early-drop ring and its cursor (as `EMBRYONIC`, `EMBRYONIC_NEXT`).
    pub const MAP_EMBRYONIC6: &str = "EMBRYONIC6";
    pub const MAP_EMBRYONIC6_NEXT: &str = "EMBRYONIC6_NEXT";
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
    pod!(
        FlowKey,
        NatEntry,
        FlowKey6,
        NatEntry6,
        PublishKey6,
        PublishTarget6,
        EmbryonicSlot6,
        NatConfig,
        Timeouts,
        FragKey,
        FragEntry,
        Endpoint,
        BridgeInfo,
        PublishKey,
        PublishTarget,
        HairpinEntry,
        HairpinEntry6,
        TraceTuple,
        TraceEvent,
        TraceFilter,
        Traffic
    );

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
        assert_eq!(size_of::<NatEntry>(), 48);
        assert_eq!(size_of::<NatConfig>(), 16 + 52 + 4 + 16);
        assert_eq!(size_of::<FlowKey6>(), 40);
        assert_eq!(size_of::<NatEntry6>(), 48 + 16);
        assert_eq!(size_of::<BridgeInfo>(), 16 + 16);
        assert_eq!(size_of::<PublishKey6>(), 4);
        assert_eq!(size_of::<PublishTarget6>(), 20);
        assert_eq!(size_of::<FragKey6>(), 40);
        assert_eq!(size_of::<FragEntry6>(), 24);
        assert_eq!(size_of::<EmbryonicSlot6>(), 48);
        assert_eq!(size_of::<Timeouts>(), 52);
        assert_eq!(size_of::<EmbryonicSlot>(), 24);
        assert_eq!(embryonic_slots(DEFAULT_TABLE_SIZE), 65_536);
        assert_eq!(embryonic_slots(1000), 128);
        assert_eq!(embryonic_slots(8), 16);
        assert_eq!(size_of::<TraceTuple>(), 36);
        assert_eq!(size_of::<TraceEvent>(), 104 + TRACE_CAPTURE);
        assert_eq!(size_of::<TraceFilter>(), 72);
        assert_eq!(size_of::<HairpinEntry>(), 24);
        assert_eq!(size_of::<HairpinEntry6>(), 8 + 32 + 8);
    }

    #[test]
    fn hairpin_partners_are_each_others() {
        // The asking side's entry: container 1 -> host:8080, rewritten gateway:4000 ->
        // target:80; the answer's: target:80 -> gateway:4000, rewritten host:8080 -> 1.
        let ask = FlowKey6::new([1; 4], [9; 4], 5000, 8080, IPPROTO_TCP);
        let out = HairpinEntry6 {
            src_addr: [7; 4],
            dst_addr: [2; 4],
            src_port: 4000,
            dst_port: 80,
            ..HairpinEntry6::default()
        };
        let back_key = out.partner(&ask);
        assert_eq!(
            back_key,
            FlowKey6::new([2; 4], [7; 4], 80, 4000, IPPROTO_TCP)
        );
        let back = HairpinEntry6 {
            src_addr: [9; 4],
            dst_addr: [1; 4],
            src_port: 8080,
            dst_port: 5000,
            ..HairpinEntry6::default()
        };
        assert_eq!(back.partner(&back_key), ask);
        let ask4 = FlowKey::new(1, 9, 5000, 8080, IPPROTO_UDP);
        let out4 = HairpinEntry {
            src_addr: 7,
            dst_addr: 2,
            src_port: 4000,
            dst_port: 80,
            ..HairpinEntry::default()
        };
        assert_eq!(
            out4.partner(&ask4),
            FlowKey::new(2, 7, 80, 4000, IPPROTO_UDP)
        );
    }

    #[test]
    fn ipv6_keys_and_addresses() {
        let a = [0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(addr6_from_map(addr6_to_map(a)), a);
        let original = FlowKey6::new([1; 4], [2; 4], 1000, 80, IPPROTO_TCP);
        let out = NatEntry6 {
            entry: NatEntry {
                port: 2000,
                ..NatEntry::default()
            },
            addr: [3; 4],
        };
        let reply = original.reply_key(&out);
        assert_eq!(reply, FlowKey6::new([2; 4], [3; 4], 80, 2000, IPPROTO_TCP));
        let inbound = NatEntry6 {
            entry: NatEntry {
                port: 1000,
                ..NatEntry::default()
            },
            addr: [1; 4],
        };
        assert_eq!(reply.original_key(&inbound), original);
        assert_eq!(original.reversed().reversed(), original);
    }

    #[test]
    fn reversed_key_swaps_both_ends() {
        let k = FlowKey::new(1, 2, 3, 4, IPPROTO_TCP);
        assert_eq!(k.reversed(), FlowKey::new(2, 1, 4, 3, IPPROTO_TCP));
        assert_eq!(k.reversed().reversed(), k);
    }

    #[test]
    fn reply_and_original_keys_are_inverse() {
        let original = FlowKey::new(10, 20, 1000, 80, IPPROTO_TCP);
        let out = NatEntry {
            addr: 30,
            port: 2000,
            ..NatEntry::default()
        };
        let reply = original.reply_key(&out);
        assert_eq!(reply, FlowKey::new(20, 30, 80, 2000, IPPROTO_TCP));
        let inbound = NatEntry {
            addr: 10,
            port: 1000,
            ..NatEntry::default()
        };
        assert_eq!(reply.original_key(&inbound), original);
    }

    /// Every transition of the state machine from the flag bits each side sends.
    #[test]
    fn tcp_states_from_both_directions() {
        const S: u8 = TCP_SEEN_SYN;
        const A: u8 = TCP_SEEN_ACK;
        const F: u8 = TCP_SEEN_FIN;
        const R: u8 = TCP_SEEN_RST;
        const PF: u8 = TCP_SEEN_PEER_FIN;
        const AP: u8 = TCP_SEEN_ACKED_PEER_FIN;
        let table: &[(u8, u8, TcpState)] = &[
            (S, 0, TcpState::SynSent),
            (S, S | A, TcpState::SynRecv),
            (S | A, S | A, TcpState::Established),
            (A, 0, TcpState::Established), // picked up mid-stream
            (A, A, TcpState::Established),
            (S | A | F, S | A | PF, TcpState::FinWait), // original closed, not yet acknowledged
            (S | A | F, S | A | PF | AP, TcpState::CloseWait), // acknowledged
            (S | A | PF | AP, S | A | F, TcpState::CloseWait), // reply side closed first
            (S | A | F | PF, S | A | PF | AP | F, TcpState::LastAck), // both FINs, last ACK pending
            (S | A | F | PF | AP, S | A | PF | AP | F, TcpState::TimeWait),
            (S | A | R, S | A, TcpState::Close),
            (S, R | A, TcpState::Close), // connection refused
        ];
        for &(o, r, want) in table {
            assert_eq!(tcp_state(o, r), want, "orig {o:#04x} reply {r:#04x}");
        }
        assert!(TcpState::TimeWait.reusable() && TcpState::Close.reusable());
        assert!(wire::valid_tcp_flags(
            wire::TCP_SYN | wire::TCP_ECE | wire::TCP_CWR
        ));
        assert!(wire::valid_tcp_flags(wire::TCP_ACK | wire::TCP_PSH));
        assert!(!wire::valid_tcp_flags(0), "a segment without flags");
        assert!(!wire::valid_tcp_flags(wire::TCP_SYN | wire::TCP_FIN));
        assert!(!wire::valid_tcp_flags(wire::TCP_FIN), "FIN without ACK");
        assert!(!wire::valid_tcp_flags(wire::TCP_SYN | wire::TCP_RST));
        assert!(wire::opens_connection(wire::TCP_SYN | wire::TCP_ECE));
        assert!(!wire::opens_connection(wire::TCP_SYN | wire::TCP_ACK));
        assert!(!TcpState::Established.reusable());
        assert_eq!(Timeouts::KERNEL.tcp(TcpState::Established), 432_000);
    }

    #[test]
    fn counter_table_is_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_ne!(c.name(), "count");
        }
    }
}
