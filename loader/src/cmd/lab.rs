//! `bpfnat lab up|down`: the self-contained lab ([`crate::host::lab`]).

use crate::host::{lab, system};

pub fn up(json: bool) -> anyhow::Result<()> {
    system::require_root()?;
    let spec = lab::LabSpec::default_lab();
    lab::up(&spec)?;
    if json {
        super::print_json(&serde_json::json!({"lab": "up"}));
    } else {
        println!("{}", lab::describe(&spec));
    }
    Ok(())
}

pub fn down(json: bool) -> anyhow::Result<()> {
    system::require_root()?;
    lab::down(&lab::LabSpec::default_lab())?;
    if json {
        super::print_json(&serde_json::json!({"lab": "down"}));
    } else {
        println!("lab removed");
    }
    Ok(())
}
