//! Bottom layer: parsing of the user's arguments and IPv4 frames; no state, no I/O.
//!
//! - [`addr`]: CIDRs, port ranges, protocol names.
//! - [`packet`]: frames built from scratch with independently computed checksums (the
//!   crafted-packet tests and `bpfnat profile`).
pub mod addr;
pub mod packet;
