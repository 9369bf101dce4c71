//! Every map the datapath uses. BTF-defined, so `bpftool map dump` shows field names.
//!
//! Sizes here are defaults; the loader overrides the connection tables' `max_entries` at load
//! time (`--table-size`).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    macros::btf_map,
};
use bpfnat_common::{
    BridgeInfo, Counter, EmbryonicSlot, EmbryonicSlot6, Endpoint, FlowKey, FlowKey6, FragEntry,
    FragEntry6, FragKey, FragKey6, HairpinEntry, HairpinEntry6, NatConfig, NatEntry, NatEntry6,
    PublishKey, PublishKey6, PublishTarget, PublishTarget6, TraceEvent, TraceFilter, TraceTuple,
    Traffic, DEFAULT_TABLE_SIZE, TRAFFIC_HOOKS, TRAFFIC_PROTOS,
};

const TABLE: usize = DEFAULT_TABLE_SIZE as usize;

/// Type of the two connection tables.
pub type NatTable = HashMap<FlowKey, NatEntry, TABLE>;

/// Original direction: key = tuple as the container sent it, value = external address/port.
#[btf_map]
pub static NAT_OUT: NatTable = HashMap::new();

/// Reply direction: key = tuple as the reply arrives on the uplink, value = internal
/// address/port. Inserted first, with `BPF_NOEXIST`: owning this key is what reserves an
/// external port for one destination, so two CPUs can never hand out the same mapping.
#[btf_map]
pub static NAT_IN: NatTable = HashMap::new();

/// Runtime configuration at index 0, written by the loader.
#[btf_map]
pub static CONFIG: Array<NatConfig, 1> = Array::new();

/// Internal subnets whose traffic leaving through the uplink is masqueraded; the value is the
/// ifindex of the bridge the subnet lives on (0 if none is known).
#[btf_map]
pub static INTERNAL_NETS: LpmTrie<u32, u32, 64> = LpmTrie::new();

/// Per-CPU counters indexed by [`Counter`]; the loader sums them.
#[btf_map]
pub static COUNTERS: PerCpuArray<u64, { Counter::Count as usize }> = PerCpuArray::new();

/// Fragmented datagrams in flight: their first fragment (which carries the ports) records
/// where the later ones go. LRU: an entry is only needed for the ~ms a datagram is in flight,
/// and losing one only drops that datagram's tail (its sender retransmits).
#[btf_map]
pub static FRAGS: LruHashMap<FragKey, FragEntry, 8192> = LruHashMap::new();

/// Per-CPU time of the last log line, to keep rare-event logging at most once a second.
#[btf_map]
pub static LOG_RATE: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Bridges the datapath serves: bridge ifindex -> gateway, MAC, flags. Written by the loader.
#[btf_map]
pub static BRIDGES: HashMap<u32, BridgeInfo, 64> = HashMap::new();

/// Bridge ports with the port program attached: port ifindex -> bridge ifindex.
#[btf_map]
pub static PORTS: HashMap<u32, u32, 4096> = HashMap::new();

/// Containers on the ports: address -> port and MAC. Assigned by the loader (the address on
/// the container's veth), or learned from the frames a port sends, like a bridge's
/// forwarding database. Not LRU: what a container on one port learns must never push out
/// another's assigned address; the loader removes a port's entries when the port goes.
#[btf_map]
pub static ENDPOINTS: HashMap<u32, Endpoint, 65536> = HashMap::new();

/// Ports whose addresses the loader assigned in `ENDPOINTS` (port ifindex -> how many): such
/// a port may send from those addresses only.
#[btf_map]
pub static ASSIGNED_PORTS: HashMap<u32, u32, 4096> = HashMap::new();

/// Published ports. Written by the loader at run time.
#[btf_map]
pub static PUBLISH: HashMap<PublishKey, PublishTarget, 16384> = HashMap::new();

/// Hairpin connections (a container reaching a published port through the host's address),
/// one entry per direction. Aged by the loader's sweeper like the connection tables; not
/// LRU, so that one container's many hairpin connections cannot push others' out.
#[btf_map]
pub static HAIRPIN: HashMap<FlowKey, HairpinEntry, 16384> = HashMap::new();

/// What to trace; tracing is off while `enabled` is 0, and then costs one array read.
#[btf_map]
pub static TRACE_FILTER: Array<TraceFilter, 1> = Array::new();

/// Traced packets, read by `bpfnat trace`. 1 MiB: a few thousand events of backlog.
#[btf_map]
pub static TRACE: RingBuf<TraceEvent, { 1 << 20 }> = RingBuf::new();

/// The traced packet's tuple before (0) and after (1) the program's work, one pair per CPU:
/// two IPv6 tuples would crowd the IPv6 programs' stack.
#[btf_map]
pub static TRACE_TUPLES: PerCpuArray<TraceTuple, 2> = PerCpuArray::new();

/// Per-CPU packets and bytes by hook and protocol (`traffic_index`).
#[btf_map]
pub static TRAFFIC: PerCpuArray<Traffic, { (TRAFFIC_HOOKS * TRAFFIC_PROTOS) as usize }> =
    PerCpuArray::new();

/// Connections opened from outside, oldest overwritten first (`embryonic`): sized by the
/// loader to a quarter of the table (`embryonic_slots`), told to the datapath in `CONFIG`.
#[btf_map]
pub static EMBRYONIC: Array<EmbryonicSlot, 65536> = Array::new();

/// The next slot of `EMBRYONIC` (a counter; the slot is its value modulo the ring's size).
#[btf_map]
pub static EMBRYONIC_NEXT: Array<u64, 1> = Array::new();

/// Type of the two IPv6 connection tables. Not preallocated (`BPF_F_NO_PREALLOC`): a host
/// with little IPv6 traffic does not pay the full table's memory up front.
pub type NatTable6 = HashMap<FlowKey6, NatEntry6, TABLE, 1>;

/// IPv6, original direction: as `NAT_OUT`.
#[btf_map]
pub static NAT6_OUT: NatTable6 = HashMap::new();

/// IPv6, reply direction: as `NAT_IN` (claimed first, with `BPF_NOEXIST`).
#[btf_map]
pub static NAT6_IN: NatTable6 = HashMap::new();

/// The containers' IPv6 subnets: 128-bit prefix -> the ifindex of the subnet's bridge.
#[btf_map]
pub static INTERNAL_NETS6: LpmTrie<[u32; 4], u32, 64> = LpmTrie::new();

/// The IPv6 programs the IPv4 entry points tail-call for IPv6 frames (`names::IPV6_*`);
/// filled by the loader.
#[btf_map]
pub static IPV6_PROGS: ProgramArray<3> = ProgramArray::new();

/// Containers' IPv6 addresses on the ports, learned from what each port sends: address ->
/// port and MAC. Not LRU, for the reason `ENDPOINTS` is not; the loader removes a port's
/// entries when the port goes.
#[btf_map]
pub static ENDPOINTS6: HashMap<[u32; 4], Endpoint, 65536> = HashMap::new();

/// Scratch space of the IPv6 port search, one slot per CPU (see `nat6::PortSearch6`).
#[btf_map]
pub static SEARCH6: PerCpuArray<crate::nat6::PortSearch6, 1> = PerCpuArray::new();

/// The IPv6 packet being handled, one slot per CPU (see `ipv6::Packet6`).
#[btf_map]
pub static PACKET6: PerCpuArray<crate::ipv6::Packet6, 1> = PerCpuArray::new();

/// Ports whose IPv6 addresses the loader assigned in `ENDPOINTS6` (port ifindex -> how
/// many): such a port may send from those IPv6 addresses only.
#[btf_map]
pub static ASSIGNED_PORTS6: HashMap<u32, u32, 4096> = HashMap::new();

/// Ports published on the uplink's IPv6 address. Written by the loader at run time.
#[btf_map]
pub static PUBLISH6: HashMap<PublishKey6, PublishTarget6, 16384> = HashMap::new();

/// IPv6 fragmented datagrams in flight (see `FRAGS`).
#[btf_map]
pub static FRAGS6: LruHashMap<FragKey6, FragEntry6, 8192> = LruHashMap::new();

/// IPv6 connections opened from outside, oldest overwritten first (see `EMBRYONIC`); the
/// loader sizes it like `EMBRYONIC`.
#[btf_map]
pub static EMBRYONIC6: Array<EmbryonicSlot6, 65536> = Array::new();

/// The next slot of `EMBRYONIC6`.
#[btf_map]
pub static EMBRYONIC6_NEXT: Array<u64, 1> = Array::new();

/// IPv6 hairpin connections (see `HAIRPIN`), one entry per direction. Not LRU, for the
/// reason `HAIRPIN` is not; not preallocated, like the IPv6 connection tables.
#[btf_map]
pub static HAIRPIN6: HashMap<FlowKey6, HairpinEntry6, 16384, 1> = HashMap::new();

/// The IPv6 hairpin program, tail-called by the IPv6 port program (slot 0; filled by the
/// loader): its own program, so that it has a stack of its own (the parse, the new
/// connection's two entries and the port search do not fit beside the port program's).
#[btf_map]
pub static HAIRPIN6_PROG: ProgramArray<1> = ProgramArray::new();
