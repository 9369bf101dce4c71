//! The connection table and what it holds: listing, filtering, removal, timeouts, the
//! sweeper, published ports. Takes map handles (`NatTables`, the `PUBLISH` map), whoever
//! holds them: the daemon's loaded datapath or another process's pinned maps. Uses
//! [`crate::bpf`] and below.
//!
//! - [`timeouts`]: the TCP state of a mapping and how long it may stay idle.
//! - [`conntrack`]: the table as `conntrack -L` shows it: list, filter, delete, flush.
//! - [`conntrack6`]: the IPv6 table: list, expiry, removal.
//! - [`expiry`]: the sweeper that removes idle mappings, both halves together.
//! - [`publish`]: published ports (Docker's `-p`): specs, the `PUBLISH` map, and removal of
//!   the connections made through a port that goes; [`publish6`] the same on IPv6.
pub mod conntrack;
pub mod conntrack6;
pub mod expiry;
pub mod publish;
pub mod publish6;
pub mod timeouts;
