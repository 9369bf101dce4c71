//! The host's own sockets. The uplink address is also the host's: its own connections and
//! listeners use the same address and draw ports from the same range as the containers'
//! mappings. A port the host is using must never be handed to a container (replies would go
//! to the container and the host would get nothing; nf_nat avoids it by seeing the host's own
//! conntrack entries), and a segment no socket claims tells a stray from the host's own.

use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    helpers::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    programs::TcContext,
    EbpfContext as _,
};
use bpfnat_common::{IPPROTO_TCP, IPPROTO_UDP};

/// The IPv4 part of a `bpf_sock_tuple`: two addresses and two ports.
const IPV4_TUPLE_LEN: u32 = 12;
/// The IPv6 part: two 16-byte addresses and two ports.
const IPV6_TUPLE_LEN: u32 = 36;

/// Whether a socket of the host (in the uplink's namespace) would receive a `proto` packet
/// from `src:sport` to `dst:dport` (network byte order): a connected socket of that exact
/// tuple, or one bound to the destination (a listener, an unconnected UDP socket). Other
/// protocols have no sockets to look up: `false`.
#[inline(always)]
pub fn has_socket(ctx: &TcContext, proto: u8, src: u32, dst: u32, sport: u16, dport: u16) -> bool {
    // SAFETY: bpf_sock_tuple is plain data (integers in unions), valid when zeroed.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = src;
    tuple.__bindgen_anon_1.ipv4.daddr = dst;
    tuple.__bindgen_anon_1.ipv4.sport = sport;
    tuple.__bindgen_anon_1.ipv4.dport = dport;
    lookup(ctx, proto, &mut tuple, IPV4_TUPLE_LEN)
}

/// [`has_socket`] for an IPv6 tuple.
#[inline(always)]
pub fn has_socket6(
    ctx: &TcContext,
    proto: u8,
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
) -> bool {
    // SAFETY: bpf_sock_tuple is plain data (integers in unions), valid when zeroed.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv6.saddr = src;
    tuple.__bindgen_anon_1.ipv6.daddr = dst;
    tuple.__bindgen_anon_1.ipv6.sport = sport;
    tuple.__bindgen_anon_1.ipv6.dport = dport;
    lookup(ctx, proto, &mut tuple, IPV6_TUPLE_LEN)
}

/// Look `tuple` (of `len` bytes) up among the host's TCP or UDP sockets.
#[inline(always)]
fn lookup(ctx: &TcContext, proto: u8, tuple: &mut bpf_sock_tuple, len: u32) -> bool {
    let netns = BPF_F_CURRENT_NETNS as u64;
    let sk = if proto == IPPROTO_TCP {
        // skc: request and TIME_WAIT sockets count too (a port in TIME_WAIT is still the
        // host's for that peer).
        // SAFETY: the context is this program's skb and `tuple` a live stack value of the
        // length given; the returned socket, if any, is released below.
        unsafe { bpf_skc_lookup_tcp(ctx.as_ptr(), tuple, len, netns, 0) }
    } else if proto == IPPROTO_UDP {
        // SAFETY: as above.
        unsafe { bpf_sk_lookup_udp(ctx.as_ptr(), tuple, len, netns, 0) }
    } else {
        return false;
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` is the non-null socket the lookup returned, released exactly once.
    unsafe { bpf_sk_release(sk as *mut _) };
    true
}
