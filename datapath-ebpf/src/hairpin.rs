//! Hairpin: a container reaching a published port through the host's uplink address (from
//! another container or from the published one itself). Both addresses change: the
//! destination becomes the published container, and the source becomes the bridge's gateway
//! so that the answer comes back through the host (here) instead of going straight to the
//! asking container, which would not recognise it. This is Docker's hairpin MASQUERADE.
//!
//! Both families, one logic: `Family` says what differs (addresses, keys, entries, the
//! table, the host-socket lookup); [`find`], [`touch`], [`create`] and [`rewrite`] are IPv4's,
//! the same names with a `6` IPv6's (`HAIRPIN6`, used by the IPv6 hairpin program).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use bpfnat_common::{
    wire::{TCP_FIN, TCP_RST},
    Counter, FlowKey, FlowKey6, HairpinEntry, HairpinEntry6, PublishTarget, PublishTarget6,
};

use crate::{
    csum::{rewrite_addr, rewrite_addr6, rewrite_port, rewrite_port_stored},
    host,
    ipv6::{Packet6, IP6_DST_OFF, IP6_SRC_OFF},
    maps::{HAIRPIN, HAIRPIN6},
    parse::{Packet, IP_DST_OFF, IP_SRC_OFF},
    stats::count,
};

/// Gateway ports tried for a new hairpin connection: its own port first, then random ones
/// above 1024. Few tries: the gateway's port space only holds hairpin connections.
const TRIES: u32 = 8;

/// What the hairpin logic needs of an address family.
trait Family {
    type Addr: Copy;
    type Key;
    type Entry: Copy;
    fn key(src: Self::Addr, dst: Self::Addr, sport: u16, dport: u16, proto: u8) -> Self::Key;
    /// An entry rewriting to `src:sport -> dst:dport`, last seen `now`.
    fn entry(now: u64, src: Self::Addr, dst: Self::Addr, sport: u16, dport: u16) -> Self::Entry;
    /// The fields a packet stamps: `last_seen_ns` and `tcp_flags`.
    fn stamped(entry: *mut Self::Entry) -> (*mut u64, *mut u8);
    /// Insert into the family's table; `false`: refused (held already, or full).
    fn insert(key: &Self::Key, entry: &Self::Entry, flags: u64) -> bool;
    fn remove(key: &Self::Key);
    /// Whether a host socket would receive `src:sport -> dst:dport` ([`host::has_socket`]).
    fn host_socket(
        ctx: &TcContext,
        proto: u8,
        src: Self::Addr,
        dst: Self::Addr,
        sport: u16,
        dport: u16,
    ) -> bool;
}

/// Both families' implementation: the entries and keys have the same field names, the tables
/// and the lookups differ.
macro_rules! family {
    ($name:ident, $addr:ty, $key:ident, $entry:ident, $table:ident, $lookup:path) => {
        struct $name;
        impl Family for $name {
            type Addr = $addr;
            type Key = $key;
            type Entry = $entry;
            #[inline(always)]
            fn key(src: $addr, dst: $addr, sport: u16, dport: u16, proto: u8) -> $key {
                $key::new(src, dst, sport, dport, proto)
            }
            #[inline(always)]
            fn entry(now: u64, src: $addr, dst: $addr, sport: u16, dport: u16) -> $entry {
                $entry {
                    last_seen_ns: now,
                    src_addr: src,
                    dst_addr: dst,
                    src_port: sport,
                    dst_port: dport,
                    tcp_flags: 0,
                    pad: 0,
                    pad2: 0,
                }
            }
            #[inline(always)]
            fn stamped(entry: *mut $entry) -> (*mut u64, *mut u8) {
                // SAFETY: only the fields' addresses are taken (no read).
                unsafe { (&raw mut (*entry).last_seen_ns, &raw mut (*entry).tcp_flags) }
            }
            #[inline(always)]
            fn insert(key: &$key, entry: &$entry, flags: u64) -> bool {
                $table.insert(key, entry, flags).is_ok()
            }
            #[inline(always)]
            fn remove(key: &$key) {
                let _ = $table.remove(key);
            }
            #[inline(always)]
            fn host_socket(
                ctx: &TcContext,
                proto: u8,
                src: $addr,
                dst: $addr,
                sport: u16,
                dport: u16,
            ) -> bool {
                $lookup(ctx, proto, src, dst, sport, dport)
            }
        }
    };
}
family!(V4, u32, FlowKey, HairpinEntry, HAIRPIN, host::has_socket);
family!(
    V6,
    [u32; 4],
    FlowKey6,
    HairpinEntry6,
    HAIRPIN6,
    host::has_socket6
);

/// The entry of a known hairpin connection (either direction) for `pkt`.
#[inline(always)]
pub fn find(pkt: &Packet) -> Option<*mut HairpinEntry> {
    HAIRPIN.get_ptr_mut(FlowKey::new(
        pkt.src_addr,
        pkt.dst_addr,
        pkt.src_port,
        pkt.dst_port,
        pkt.proto,
    ))
}

/// [`find`] for IPv6.
#[inline(always)]
pub fn find6(pkt: &Packet6) -> Option<*mut HairpinEntry6> {
    HAIRPIN6.get_ptr_mut(pkt.key())
}

/// A packet carrying TCP flags `flags` of the hairpin connection `entry` (either family):
/// stamp it with the time and the FIN and RST it carries (the sweeper ages a closed
/// connection sooner), and return the rewrite.
#[inline(always)]
fn stamp<F: Family>(entry: *mut F::Entry, flags: u8) -> F::Entry {
    let closing = flags & (TCP_FIN | TCP_RST);
    let (last_seen_ns, tcp_flags) = F::stamped(entry);
    // SAFETY: a pointer from a successful map lookup is non-null, aligned and valid for the
    // whole program run (the verifier checks the lookup's result before any use); the
    // clock helper has no preconditions.
    unsafe {
        *last_seen_ns = bpf_ktime_get_ns();
        // Written only when it changes: most packets carry neither flag.
        if closing & !*tcp_flags != 0 {
            *tcp_flags |= closing;
        }
        *entry
    }
}

/// A packet of the hairpin connection `entry` (from [`find`]): stamp it and return the
/// rewrite.
#[inline(always)]
pub fn touch(entry: *mut HairpinEntry, pkt: &Packet) -> HairpinEntry {
    stamp::<V4>(entry, pkt.tcp_flags)
}

/// [`touch`] for IPv6 (an entry from [`find6`]).
#[inline(always)]
pub fn touch6(entry: *mut HairpinEntry6, pkt: &Packet6) -> HairpinEntry6 {
    stamp::<V6>(entry, pkt.tcp_flags)
}

/// A random gateway port above 1024 (network order).
#[inline(always)]
fn random_port() -> u16 {
    // SAFETY: bpf_get_prandom_u32 takes no arguments and has no preconditions.
    ((1024 + unsafe { bpf_get_prandom_u32() } % 64512) as u16).to_be()
}

/// A new hairpin connection, either family, from `src:sport` (asking `dst:dport`, the
/// host's address and a published port) to `target:target_port`, sourced from `gateway`.
/// Its answers' direction (as the target will send them) is claimed first with
/// `BPF_NOEXIST`, on the asking side's own port if it is free, else on random ones; a port
/// the host uses with the target (a connected socket, or one bound to the gateway's port)
/// is the host's. Returns the rewrite of this first packet.
#[inline(always)]
fn create_in<F: Family>(
    ctx: &TcContext,
    proto: u8,
    (src, dst, sport, dport): (F::Addr, F::Addr, u16, u16),
    target: F::Addr,
    target_port: u16,
    gateway: F::Addr,
) -> Result<F::Entry, Counter> {
    // SAFETY: bpf_ktime_get_ns reads a clock; no arguments, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // The answers are turned back into what the asking side sent.
    let back = F::entry(now, dst, src, dport, sport);
    let mut port = sport;
    let mut i = 0;
    while i < TRIES {
        let back_key = F::key(target, gateway, target_port, port, proto);
        if F::host_socket(ctx, proto, target, gateway, target_port, port) {
            count(Counter::PortHostOwned);
        } else if F::insert(&back_key, &back, BPF_NOEXIST as u64) {
            let out = F::entry(now, gateway, target, port, target_port);
            if !F::insert(&F::key(src, dst, sport, dport, proto), &out, 0) {
                F::remove(&back_key);
                return Err(Counter::DropTableFull);
            }
            return Ok(out);
        }
        port = random_port();
        i += 1;
    }
    Err(Counter::DropNoPort)
}

/// A new hairpin connection from `pkt` (to the host's address and a published port) to
/// `target`, sourced from `gateway`. Returns the rewrite of this first packet.
#[inline(always)]
pub fn create(
    ctx: &TcContext,
    pkt: &Packet,
    target: &PublishTarget,
    gateway: u32,
) -> Result<HairpinEntry, Counter> {
    create_in::<V4>(
        ctx,
        pkt.proto,
        (pkt.src_addr, pkt.dst_addr, pkt.src_port, pkt.dst_port),
        target.addr,
        target.port,
        gateway,
    )
}

/// [`create`] for IPv6: sourced from the IPv6 `gateway` of the target's bridge.
#[inline(always)]
pub fn create6(
    ctx: &TcContext,
    pkt: &Packet6,
    target: &PublishTarget6,
    gateway: &[u32; 4],
) -> Result<HairpinEntry6, Counter> {
    create_in::<V6>(
        ctx,
        pkt.proto,
        (pkt.src_addr, pkt.dst_addr, pkt.src_port, pkt.dst_port),
        target.addr,
        target.port,
        *gateway,
    )
}

/// Rewrite the packet to `to` (both ends).
#[inline(always)]
pub fn rewrite(ctx: &TcContext, pkt: &Packet, to: &HairpinEntry) -> Result<(), Counter> {
    rewrite_port(ctx, &pkt.l4, pkt.l4.src_port_off, pkt.src_port, to.src_port)?;
    rewrite_port(ctx, &pkt.l4, pkt.l4.dst_port_off, pkt.dst_port, to.dst_port)?;
    rewrite_addr(ctx, &pkt.l4, IP_SRC_OFF, pkt.src_addr, to.src_addr)?;
    rewrite_addr(ctx, &pkt.l4, IP_DST_OFF, pkt.dst_addr, to.dst_addr)?;
    count(Counter::HairpinTranslated);
    Ok(())
}

/// [`rewrite`] for IPv6: the ports through the store helper (the parse lives in a map slot,
/// so the verifier cannot bound its offsets), each address as one 128-bit checksum
/// difference through the pseudo-header.
#[inline(always)]
pub fn rewrite6(ctx: &TcContext, pkt: &Packet6, to: &HairpinEntry6) -> Result<(), Counter> {
    rewrite_port_stored(ctx, &pkt.l4, pkt.l4.src_port_off, pkt.src_port, to.src_port)?;
    rewrite_port_stored(ctx, &pkt.l4, pkt.l4.dst_port_off, pkt.dst_port, to.dst_port)?;
    rewrite_addr6(ctx, &pkt.l4, IP6_SRC_OFF, pkt.src_addr, to.src_addr)?;
    rewrite_addr6(ctx, &pkt.l4, IP6_DST_OFF, pkt.dst_addr, to.dst_addr)?;
    count(Counter::HairpinTranslated);
    Ok(())
}
