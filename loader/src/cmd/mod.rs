//! Top layer: one module per CLI verb, like bpftool's `do_<verb>`. Each takes what the command
//! line said (already parsed by clap in `main.rs`), does the work through the layers below and
//! prints the result, as text or, with `--json`, as one JSON document. Uses every layer.
//!
//! - [`up`]: run the daemon ([`crate::daemon`]); [`down`]: remove a kept instance.
//! - [`status`], [`stats`], [`conntrack`], [`publish`], [`trace`]: a running instance, through
//!   its pinned maps.
//! - [`profile`]: each program's cost per path, with BPF_PROG_TEST_RUN in a private lab.
//! - [`lab`]: the self-contained lab topology.

use std::io::Write as _;

use anyhow::Context as _;

pub mod conntrack;
pub mod down;
pub mod lab;
pub mod profile;
pub mod publish;
pub mod stats;
pub mod status;
pub mod trace;
pub mod up;

/// One JSON document on its own line.
fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// Write to stdout and flush; Ok(false) if the reader has gone (broken pipe, `| head`).
fn write_stdout(text: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
