//! Packet trace: when `bpfnat trace` turns it on, every packet matching its filter (before or
//! after translation) produces one event in the `TRACE` ring buffer: hook, IP version, tuple
//! before and after, TCP flags, action, drop reason and the packet's first bytes (for pcap).
//! Off, it costs one read of `TRACE_FILTER` per packet. Both families: an IPv4 address is the
//! first word of a tuple's address; an IPv6 packet's ports are read when its L4 header
//! follows the fixed header (none behind extension headers: tracing never walks them).

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use bpfnat_common::{
    wire::{ETH_P_IP, ETH_P_IPV6},
    TraceFilter, TraceTuple, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, TRACE_CAPTURE,
    TRACE_IPV4, TRACE_IPV6,
};

use crate::{
    maps::{TRACE, TRACE_FILTER, TRACE_TUPLES},
    parse::ETH_HLEN,
};

/// Slots of `TRACE_TUPLES`.
const BEFORE: u32 = 0;
const AFTER: u32 = 1;

/// The filter, if tracing is on.
#[inline(always)]
fn filter() -> Option<&'static TraceFilter> {
    match TRACE_FILTER.get(0) {
        Some(f) if f.enabled != 0 => Some(f),
        _ => None,
    }
}

/// Whether tracing is on; if so, the packet's tuple before the program's work is noted in
/// this CPU's slot.
#[inline(always)]
pub fn start(ctx: &TcContext) -> bool {
    if filter().is_none() {
        return false;
    }
    note_before(ctx);
    true
}

/// The tuple before the program's work, into this CPU's slot. A BPF subprogram of its own,
/// like [`emit`]: the programs' logic keeps its stack.
#[inline(never)]
fn note_before(ctx: &TcContext) {
    if let Some(before) = slot(BEFORE) {
        tuple(ctx, before);
    }
}

/// This CPU's tuple slot `index` ([`BEFORE`] or [`AFTER`]).
#[inline(always)]
fn slot(index: u32) -> Option<&'static mut TraceTuple> {
    // SAFETY: this CPU's slot of a per-CPU array, from a successful lookup; nothing else uses
    // it while this program runs.
    TRACE_TUPLES.get_ptr_mut(index).map(|p| unsafe { &mut *p })
}

/// `t` zeroed, as 4-byte stores: assigning a zeroed tuple compiles to a byte-by-byte `memset`
/// loop. Volatile stores keep LLVM from turning these back into that call.
#[inline(always)]
fn zero(t: &mut TraceTuple) {
    const WORDS: usize = core::mem::size_of::<TraceTuple>() / 4;
    let words = t as *mut TraceTuple as *mut u32;
    for i in 0..WORDS {
        // SAFETY: i < WORDS, inside the tuple; its alignment is 4.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// The ports (or echo identifier) and TCP's flags from the L4 header's first 16 bytes.
#[inline(always)]
fn ports(t: &mut TraceTuple, proto: u8, l4: [u32; 4]) -> u8 {
    let ports = l4[0].to_ne_bytes();
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            t.src_port = u16::from_ne_bytes([ports[0], ports[1]]);
            t.dst_port = u16::from_ne_bytes([ports[2], ports[3]]);
            if proto == IPPROTO_TCP {
                return l4[3].to_ne_bytes()[1];
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let id = l4[1].to_ne_bytes();
            t.src_port = u16::from_ne_bytes([id[0], id[1]]);
            t.dst_port = t.src_port;
        }
        _ => {}
    }
    0
}

/// `N` words of the packet from `off` if it has them, else the first `M` (a datagram too
/// short for a TCP header), the rest zero; `None` if it has not even those. One copy in the
/// common case: helper calls are what tracing costs.
#[inline(always)]
fn words<const N: usize, const M: usize>(ctx: &TcContext, off: usize) -> Option<[u32; N]> {
    if let Ok(w) = ctx.load::<[u32; N]>(off) {
        return Some(w);
    }
    let short: [u32; M] = ctx.load(off).ok()?;
    let mut w = [0u32; N];
    let mut i = 0;
    while i < M && i < N {
        w[i] = short[i];
        i += 1;
    }
    Some(w)
}

/// Fill `t` with the packet's tuple as it is now (zeros where unreadable); returns the IP
/// version (0: neither), the protocol and the TCP flags. The family comes from the skb, the
/// rest from one copy of the IP header and the L4 header's first 16 bytes (two for an IPv4
/// header with options).
#[inline(always)]
fn tuple(ctx: &TcContext, t: &mut TraceTuple) -> (u8, u8, u8) {
    zero(t);
    // SAFETY: the context's skb is valid for the whole program run.
    let ether_type = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    match ether_type {
        ETH_P_IP => {
            // Version/IHL to the destination address, then the L4 header if no options.
            let Some(w) = words::<9, 7>(ctx, ETH_HLEN) else {
                return (TRACE_IPV4, 0, 0);
            };
            let version_ihl = w[0].to_ne_bytes()[0];
            let proto = w[2].to_ne_bytes()[1];
            t.src_addr[0] = w[3];
            t.dst_addr[0] = w[4];
            let ihl = (version_ihl & 0x0f) as usize;
            let l4 = if ihl == 5 {
                [w[5], w[6], w[7], w[8]]
            } else {
                // At most 60 bytes of header: a bound the verifier can see.
                words::<4, 2>(ctx, ETH_HLEN + ihl * 4).unwrap_or([0; 4])
            };
            (TRACE_IPV4, proto, ports(t, proto, l4))
        }
        ETH_P_IPV6 => {
            // From the payload length: next header, addresses, then the L4 header (its
            // ports only behind no extension header).
            let Some(w) = words::<13, 11>(ctx, ETH_HLEN + 4) else {
                return (TRACE_IPV6, 0, 0);
            };
            let next = w[0].to_ne_bytes()[2];
            t.src_addr = [w[1], w[2], w[3], w[4]];
            t.dst_addr = [w[5], w[6], w[7], w[8]];
            (
                TRACE_IPV6,
                next,
                ports(t, next, [w[9], w[10], w[11], w[12]]),
            )
        }
        _ => (0, 0, 0),
    }
}

#[inline(always)]
fn matches(f: &TraceFilter, t: &TraceTuple, family: u8, proto: u8) -> bool {
    let mut nets = true;
    for i in 0..4 {
        nets &= t.src_addr[i] & f.src_mask[i] == f.src_addr[i]
            && t.dst_addr[i] & f.dst_mask[i] == f.dst_addr[i];
    }
    (f.family == 0 || f.family == family)
        && (f.proto == 0 || f.proto == proto)
        && (f.port == 0 || f.port == t.src_port || f.port == t.dst_port)
        && nets
}

/// Emit the event of one packet if its tuple before ([`start`]) or after the program's work
/// matches the filter. A BPF subprogram of its own: its locals stay off the stack of the
/// program's logic.
#[inline(never)]
pub fn emit(ctx: &TcContext, hook: u8, action: i32, reason: u32) {
    let (Some(f), Some(before), Some(after)) = (filter(), slot(BEFORE), slot(AFTER)) else {
        return;
    };
    let (family, proto, tcp_flags) = tuple(ctx, after);
    if !matches(f, before, family, proto) && !matches(f, after, family, proto) {
        return;
    }
    let Some(mut entry) = TRACE.reserve(0) else {
        return;
    };
    let e = entry.as_mut_ptr();
    let len = ctx.len();
    let cap = if (len as usize) < TRACE_CAPTURE {
        len as usize
    } else {
        TRACE_CAPTURE
    };
    // SAFETY: `e` points at the ring-buffer record reserved above (submitted or discarded
    // below), the context's skb is valid for the run, and `before`/`after` are this CPU's
    // slots.
    unsafe {
        (*e).ts_ns = bpf_ktime_get_ns();
        (*e).ifindex = (*ctx.skb.skb).ifindex;
        (*e).pkt_len = len;
        (*e).hook = hook;
        (*e).proto = proto;
        (*e).tcp_flags = tcp_flags;
        (*e).family = family;
        (*e).action = action;
        (*e).reason = reason;
        (*e).before = *before;
        (*e).after = *after;
        (*e).cap_len = 0;
        // Copy with the helper itself: aya's `load_bytes` recomputes the length from
        // `skb->len`, which the verifier can only bound to [0, N], and it refuses a zero-length
        // read. Masking keeps the length in [1, TRACE_CAPTURE] where it can see it.
        let n = ((cap.wrapping_sub(1)) & (TRACE_CAPTURE - 1)) + 1;
        let data = core::ptr::addr_of_mut!((*e).data) as *mut core::ffi::c_void;
        if cap > 0 && bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, data, n as u32) == 0 {
            (*e).cap_len = n as u32;
        }
    }
    entry.submit(0);
}
