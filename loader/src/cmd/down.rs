//! `bpfnat down`: remove an instance left running with `up --keep` (its pinned maps and links).

use crate::{bpf::instance, host::system};

pub fn run(name: &str, json: bool) -> anyhow::Result<()> {
    system::require_root()?;
    let dir = instance::down(name)?;
    if json {
        super::print_json(&serde_json::json!({"instance": name, "removed": dir}));
    } else {
        println!("removed instance {name:?} ({})", dir.display());
    }
    Ok(())
}
