//! Packet trace: when `bpfnat trace` turns it on, every packet matching its filter (before or
//! after translation) produces one event in the `TRACE` ring buffer: hook, tuple before and
//! after, TCP flags, action, drop reason and the packet's first bytes (for pcap). Off, it costs
//! one read of `TRACE_FILTER` per packet.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use bpfnat_common::{
    TraceFilter, TraceTuple, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TRACE_CAPTURE,
};

use crate::{
    maps::{TRACE, TRACE_FILTER},
    parse::{read_at, ETH_HLEN, IP_DST_OFF, IP_SRC_OFF},
};

/// The filter, if tracing is on.
#[inline(always)]
pub fn filter() -> Option<TraceFilter> {
    match TRACE_FILTER.get(0) {
        Some(f) if f.enabled != 0 => Some(*f),
        _ => None,
    }
}

/// A field in packet memory, or zero when it is not in the linear part (tracing never pulls
/// or copies: it must not change the packet, and it must stay cheap).
#[inline(always)]
fn field<T: Copy + Default>(ctx: &TcContext, offset: usize) -> T {
    read_at(ctx, offset).unwrap_or_default()
}

/// The packet's tuple, protocol and TCP flags as they are now (zeros where unreadable).
#[inline(always)]
pub fn tuple(ctx: &TcContext) -> (TraceTuple, u8, u8) {
    let mut t = TraceTuple::default();
    let version_ihl: u8 = field(ctx, ETH_HLEN);
    if version_ihl >> 4 != 4 {
        return (t, 0, 0);
    }
    let proto: u8 = field(ctx, ETH_HLEN + 9);
    t.src_addr = field(ctx, IP_SRC_OFF);
    t.dst_addr = field(ctx, IP_DST_OFF);
    // At most 60 bytes of header: a bound the verifier can see.
    let l4 = ETH_HLEN + ((version_ihl & 0x0f) as usize) * 4;
    let mut flags = 0;
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            t.src_port = field(ctx, l4);
            t.dst_port = field(ctx, l4 + 2);
            if proto == IPPROTO_TCP {
                flags = field(ctx, l4 + 13);
            }
        }
        IPPROTO_ICMP => {
            let id: u16 = field(ctx, l4 + 4);
            t.src_port = id;
            t.dst_port = id;
        }
        _ => {}
    }
    (t, proto, flags)
}

#[inline(always)]
fn matches(f: &TraceFilter, t: &TraceTuple, proto: u8) -> bool {
    (f.proto == 0 || f.proto == proto)
        && (f.port == 0 || f.port == t.src_port || f.port == t.dst_port)
        && (t.src_addr & f.src_mask == f.src_addr)
        && (t.dst_addr & f.dst_mask == f.dst_addr)
}

/// Emit the event of one packet if it matches the filter.
#[inline(always)]
pub fn emit(
    ctx: &TcContext,
    f: &TraceFilter,
    hook: u8,
    before: &TraceTuple,
    action: i32,
    reason: u32,
) {
    let (after, proto, tcp_flags) = tuple(ctx);
    if !matches(f, before, proto) && !matches(f, &after, proto) {
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
    // below), the context's skb is valid for the run, and `before` is a live reference.
    unsafe {
        (*e).ts_ns = bpf_ktime_get_ns();
        (*e).ifindex = (*ctx.skb.skb).ifindex;
        (*e).pkt_len = len;
        (*e).hook = hook;
        (*e).proto = proto;
        (*e).tcp_flags = tcp_flags;
        (*e).pad = 0;
        (*e).action = action;
        (*e).reason = reason;
        (*e).before = *before;
        (*e).after = after;
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
