//! The eBPF object in the kernel: loading, attaching, its maps and pins. Uses [`crate::host`]
//! and [`crate::util`].
//!
//! - [`datapath`]: load and verify the programs, fill the configuration maps, attach to an
//!   uplink and to bridge ports, typed accessors of the maps.
//! - [`instance`]: the pinned state of one `bpfnat up` (owner, adoption after a restart,
//!   `down`) and the pinned maps opened from another process.
//! - [`stats`]: the counters and the table occupancy, read from the pinned maps.
pub mod datapath;
pub mod instance;
pub mod stats;
