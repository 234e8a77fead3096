//! The `bert` binary's commands, one module each: the argument struct (clap) and the entry
//! point that runs it. `main.rs` only parses and dispatches.

pub mod bench;
pub mod bench_data;
pub mod bench_train;
pub mod convert;
pub mod corpus;
pub mod download;
pub mod encode;
pub mod fill_mask;
pub mod finetune;
pub mod launch;
pub mod pretrain;
pub mod serve;
pub mod tokenize;

use anyhow::Result;

use crate::backend::BackendKind;

/// `bert backends`: the backends compiled in, and the default one.
pub fn backends() -> Result<()> {
    for kind in BackendKind::all_compiled() {
        println!("{kind}");
    }
    println!("default: {}", BackendKind::resolve(None)?);
    Ok(())
}
