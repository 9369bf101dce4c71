//! `bpfnat up`: run the daemon with its settings until SIGINT/SIGTERM.

use anyhow::Context as _;

use crate::daemon::{serve, settings::Settings};

pub fn run(settings: Settings) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve::run(settings))
}
