//! Every map the datapath uses. BTF-defined, so `bpftool map dump` shows field names.
//!
//! Sizes here are defaults; the loader overrides the connection tables' `max_entries` at load
//! time (`--table-size`).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use bpfnat_common::{
    Counter, FlowKey, FragEntry, FragKey, NatConfig, NatEntry, DEFAULT_TABLE_SIZE,
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

/// Internal subnets whose traffic leaving through the uplink is masqueraded.
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
