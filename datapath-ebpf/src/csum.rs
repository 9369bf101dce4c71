//! Header rewrites with checksum fix-ups.
//!
//! The L4 checksum of the packet itself always goes through the kernel helper
//! (`bpf_l4_csum_replace`), never by hand: only the kernel knows `skb->ip_summed`. With
//! `CHECKSUM_PARTIAL` (veth, most container traffic) the L4 field holds only the
//! pseudo-header sum, so an address change (in the pseudo-header) must update it
//! (`BPF_F_PSEUDO_HDR`) but a port change must not (the port is summed later with the
//! payload); with a full checksum both are folded into the field; with `CHECKSUM_COMPLETE`
//! the helper also keeps `skb->csum` right.
//!
//! The IPv4 header checksum is always complete (no device offloads it on receive, and the
//! stack computes it before a device sees it on transmit), so it is updated by hand (RFC 1624)
//! and the header fields are written directly in packet memory: a helper call per field costs
//! more than the rest of the rewrite. Packet pointers are re-derived after every helper
//! (`ptr_at` reads `data`/`data_end` afresh), since a helper may move the packet.
//!
//! Checksums *inside* the quote of an ICMP error are plain data to the kernel, so they are
//! updated arithmetically (RFC 1624), and every quoted byte that changes is folded into the
//! outer ICMP checksum with the helper.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use bpfnat_common::Counter;

use crate::parse::{ptr_at, IP_CSUM_OFF, IP_TTL_OFF, L4};

const FAILED: Counter = Counter::DropRewriteFailed;

#[inline(always)]
fn l4_flags(l4: &L4) -> u64 {
    // UDP: a zero checksum means "none" and must stay zero; a computed zero becomes 0xffff.
    if l4.udp {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    }
}

/// Replace the IPv4 address at `addr_off` (source or destination) with `new`, fixing the IP
/// header checksum and, through the pseudo-header, the L4 checksum.
#[inline(always)]
pub fn rewrite_addr(
    ctx: &TcContext,
    l4: &L4,
    addr_off: usize,
    old: u32,
    new: u32,
) -> Result<(), Counter> {
    if l4.pseudo_header && l4.csum_off != 0 {
        ctx.l4_csum_replace(
            l4.csum_off,
            old as u64,
            new as u64,
            BPF_F_PSEUDO_HDR as u64 | 4 | l4_flags(l4),
        )
        .map_err(|_| FAILED)?;
    }
    rewrite_ip_addr(ctx, addr_off, old, new)
}

/// Replace the IPv6 address at `addr_off` (source or destination) with `new`, fixing the L4
/// checksum through the pseudo-header. IPv6 has no header checksum: the 128-bit change goes
/// into the L4 checksum as one difference ([`csum_diff128`]), applied with size 0
/// (`inet_proto_csum_replace_by_diff`), which handles full and partial checksums alike. The
/// address is written in packet memory (a helper call costs more), through the store helper
/// only where the header is not linear.
#[inline(always)]
pub fn rewrite_addr6(
    ctx: &TcContext,
    l4: &L4,
    addr_off: usize,
    old: [u32; 4],
    new: [u32; 4],
) -> Result<(), Counter> {
    if l4.pseudo_header && l4.csum_off != 0 {
        let diff = csum_diff128(old, new);
        ctx.l4_csum_replace(
            l4.csum_off,
            0,
            diff as u64,
            BPF_F_PSEUDO_HDR as u64 | l4_flags(l4),
        )
        .map_err(|_| FAILED)?;
    }
    // Re-derived after the helper, which may have moved the packet.
    match ptr_at::<[u32; 4]>(ctx, addr_off) {
        // SAFETY: the pointer comes from the bounds-checked accessor (`parse::ptr_at`), which
        // checked that every byte lies between data and data_end; unaligned writes are allowed.
        Some(p) => unsafe { p.write_unaligned(new) },
        None => ctx.store(addr_off, &new, 0).map_err(|_| FAILED)?,
    }
    Ok(())
}

/// [`rewrite_port`] through the store helper only: for offsets the verifier cannot bound
/// (the IPv6 path keeps its parse in a map slot, behind extension headers).
#[inline(always)]
pub fn rewrite_port_stored(
    ctx: &TcContext,
    l4: &L4,
    port_off: usize,
    old: u16,
    new: u16,
) -> Result<(), Counter> {
    if port_csum(ctx, l4, old, new)? {
        ctx.store(port_off, &new, 0).map_err(|_| FAILED)?;
    }
    Ok(())
}

/// The L4 checksum's part of a port change `old` -> `new`; `Ok(false)`: no change at all.
#[inline(always)]
fn port_csum(ctx: &TcContext, l4: &L4, old: u16, new: u16) -> Result<bool, Counter> {
    if old == new {
        return Ok(false);
    }
    if l4.csum_off != 0 {
        // Size 2 and no BPF_F_PSEUDO_HDR: ports are not part of the pseudo-header.
        ctx.l4_csum_replace(l4.csum_off, old as u64, new as u64, 2 | l4_flags(l4))
            .map_err(|_| FAILED)?;
    }
    Ok(true)
}

/// The checksum difference of a 128-bit change, as `bpf_csum_diff` would give it (the
/// one's-complement sum of the new words and of the old words inverted, 32 bits wide) but
/// computed here: eight additions cost less than a helper call.
#[inline(always)]
fn csum_diff128(old: [u32; 4], new: [u32; 4]) -> u32 {
    let mut sum: u64 = 0;
    for i in 0..4 {
        sum += u64::from(!old[i]) + u64::from(new[i]);
    }
    // Eight 32-bit words sum below 2^35: two end-around carries fold it to 32 bits.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum as u32
}

/// Replace an IPv4 address of a packet with no L4 header to fix (a later fragment, or an
/// ICMP message, which has no pseudo-header).
#[inline(always)]
pub fn rewrite_ip_addr(
    ctx: &TcContext,
    addr_off: usize,
    old: u32,
    new: u32,
) -> Result<(), Counter> {
    // The parser made the IP header linear; a packet that is not is refused, not half-done.
    let (Some(csum), Some(addr)) = (
        ptr_at::<u16>(ctx, IP_CSUM_OFF),
        ptr_at::<u32>(ctx, addr_off),
    ) else {
        return Err(FAILED);
    };
    // SAFETY: the pointers come from the bounds-checked accessor (`parse::ptr_at`), which
    // checked that every byte lies between data and data_end; unaligned access is allowed.
    unsafe {
        csum.write_unaligned(csum_update32(csum.read_unaligned(), old, new));
        addr.write_unaligned(new);
    }
    Ok(())
}

/// Decrement the IPv4 TTL as a router does, fixing the header checksum. `Ok(false)`: the TTL
/// is spent (the caller leaves the packet to the stack, which sends the ICMP time-exceeded).
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext) -> Result<bool, Counter> {
    let (Some(word), Some(csum)) = (
        ptr_at::<[u8; 2]>(ctx, IP_TTL_OFF),
        ptr_at::<u16>(ctx, IP_CSUM_OFF),
    ) else {
        return Err(FAILED);
    };
    // SAFETY: the pointers come from the bounds-checked accessor (`parse::ptr_at`), which
    // checked that every byte lies between data and data_end; unaligned access is allowed.
    unsafe {
        // TTL and protocol share one 16-bit word of the header.
        let old = word.read_unaligned();
        if old[0] <= 1 {
            return Ok(false);
        }
        let new = [old[0] - 1, old[1]];
        let (old16, new16) = (u16::from_ne_bytes(old), u16::from_ne_bytes(new));
        csum.write_unaligned(csum_update16(csum.read_unaligned(), old16, new16));
        word.write_unaligned(new);
    }
    Ok(true)
}

/// Replace the port (or ICMP identifier) at `port_off` with `new`.
#[inline(always)]
pub fn rewrite_port(
    ctx: &TcContext,
    l4: &L4,
    port_off: usize,
    old: u16,
    new: u16,
) -> Result<(), Counter> {
    if !port_csum(ctx, l4, old, new)? {
        return Ok(());
    }
    match ptr_at::<u16>(ctx, port_off) {
        // SAFETY: the pointers come from the bounds-checked accessor (`parse::ptr_at`), which
        // checked that every byte lies between data and data_end; unaligned access is allowed.
        Some(port) => unsafe { port.write_unaligned(new) },
        // Beyond the linear part (only in an ICMP error's quote): the helper copies it in.
        None => ctx.store(port_off, &new, 0).map_err(|_| FAILED)?,
    }
    Ok(())
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 incremental update of checksum `check` for a 16-bit word changing `old` -> `new`.
#[inline(always)]
fn csum_update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// RFC 1624 incremental update of checksum `check` for a 32-bit word changing `old` -> `new`
/// (all values as loaded from the packet; one's-complement sums do not care about byte order
/// as long as every operand uses the same one).
#[inline(always)]
fn csum_update32(check: u16, old: u32, new: u32) -> u16 {
    let mut sum = (!check) as u32;
    sum += (!(old as u16)) as u32 + (!((old >> 16) as u16)) as u32;
    sum += (new as u16) as u32 + ((new >> 16) as u16) as u32;
    !fold(sum)
}

/// A change inside the quote of an ICMP error.
pub struct Quote {
    /// Offset of the outer ICMP checksum.
    pub icmp_csum_off: usize,
}

impl Quote {
    /// Write a quoted 16-bit word and fold the change into the outer ICMP checksum.
    #[inline(always)]
    pub fn set16(&self, ctx: &TcContext, off: usize, old: u16, new: u16) -> Result<(), Counter> {
        ctx.store(off, &new, 0).map_err(|_| FAILED)?;
        ctx.l4_csum_replace(self.icmp_csum_off, old as u64, new as u64, 2)
            .map_err(|_| FAILED)
    }

    /// Write a quoted 32-bit word and fold the change into the outer ICMP checksum.
    #[inline(always)]
    pub fn set32(&self, ctx: &TcContext, off: usize, old: u32, new: u32) -> Result<(), Counter> {
        ctx.store(off, &new, 0).map_err(|_| FAILED)?;
        ctx.l4_csum_replace(self.icmp_csum_off, old as u64, new as u64, 4)
            .map_err(|_| FAILED)
    }

    /// Write a quoted IPv6 address and fold the change into the outer ICMPv6 checksum (as
    /// data: the quote is not part of the pseudo-header). Returns the change as a checksum
    /// difference, for the quoted L4 checksum.
    pub fn set128(
        &self,
        ctx: &TcContext,
        off: usize,
        old: [u32; 4],
        new: [u32; 4],
    ) -> Result<u32, Counter> {
        let diff = csum_diff128(old, new);
        ctx.store(off, &new, 0).map_err(|_| FAILED)?;
        ctx.l4_csum_replace(self.icmp_csum_off, 0, diff as u64, 0)
            .map_err(|_| FAILED)?;
        Ok(diff)
    }

    /// Update the quoted checksum at `csum_off` by a difference `diff` (from [`Self::set128`]);
    /// `udp` as in [`Self::fix_checksum`].
    pub fn fix_checksum_diff(
        &self,
        ctx: &TcContext,
        csum_off: usize,
        diff: u32,
        udp: bool,
    ) -> Result<(), Counter> {
        let check: u16 = ctx.load(csum_off).map_err(|_| FAILED)?;
        if udp && check == 0 {
            return Ok(());
        }
        let mut updated = !fold((!check) as u32 + fold(diff) as u32);
        if udp && updated == 0 {
            updated = 0xffff;
        }
        self.set16(ctx, csum_off, check, updated)
    }

    /// Update the quoted checksum at `csum_off` for a quoted word changing `old` -> `new`
    /// (a 16-bit change is passed zero-extended: the upper half cancels out). `udp`: keep a
    /// zero checksum zero, and never produce one.
    #[inline(always)]
    pub fn fix_checksum(
        &self,
        ctx: &TcContext,
        csum_off: usize,
        old: u32,
        new: u32,
        udp: bool,
    ) -> Result<(), Counter> {
        let check: u16 = ctx.load(csum_off).map_err(|_| FAILED)?;
        if udp && check == 0 {
            return Ok(());
        }
        let mut updated = csum_update32(check, old, new);
        if udp && updated == 0 {
            updated = 0xffff;
        }
        self.set16(ctx, csum_off, check, updated)
    }
}
