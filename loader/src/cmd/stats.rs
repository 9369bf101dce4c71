//! `bpfnat stats [--watch SECS]`: the counters and table occupancy of a running instance.

use std::time::Duration;

use crate::bpf::{
    instance::{self, PinnedMaps},
    stats::Stats,
};

pub fn run(name: &str, json: bool, watch: Option<u64>) -> anyhow::Result<()> {
    if watch == Some(0) {
        anyhow::bail!("--watch must be at least 1 second");
    }
    let maps = PinnedMaps::open(name)?;
    loop {
        let stats = Stats::read(&maps)?;
        let mut text = if json {
            format!("{}\n", stats.to_json())
        } else {
            stats.text()
        };
        if watch.is_some() && !json {
            text.push('\n');
        }
        // The reader went away (`| head`): done.
        if !super::write_stdout(&text)? {
            return Ok(());
        }
        let Some(secs) = watch else { return Ok(()) };
        std::thread::sleep(Duration::from_secs(secs));
        // The maps stay readable through our descriptors after the daemon exits; stop then.
        if !matches!(
            instance::status_of(&instance::dir(name))?,
            instance::Status::Running(_)
        ) {
            anyhow::bail!("instance {name:?} stopped");
        }
    }
}
