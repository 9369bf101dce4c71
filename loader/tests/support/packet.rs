//! Frame building and checking live in the library (`bpfnat::packet`), shared with
//! `bpfnat profile`.
#![allow(unused_imports)]

pub use bpfnat::packet::*;
