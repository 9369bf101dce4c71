//! Empty on purpose: the datapath is the `datapath` binary (an eBPF object). This library
//! target only lets the loader name the crate as a build-dependency, so cargo rebuilds the
//! loader when the datapath changes.
#![no_std]
