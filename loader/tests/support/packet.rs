//! Frame building and checking live in the library (`bpfnat::util::packet`), shared with
//! `bpfnat profile`.
#![allow(
    unused_imports,
    reason = "a re-export for the test binaries that use packets; the others leave it unused"
)]

pub use bpfnat::util::packet::*;
