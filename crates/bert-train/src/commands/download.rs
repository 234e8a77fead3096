//! `bert download`: a model from the Hugging Face Hub into the shared cache.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

use crate::hub::{ModelId, fetch};

/// Options of `bert download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// Hub model id: `bert-base-uncased`, `org/name`, optionally `@revision`.
    pub model_id: String,
    /// Branch, tag or commit (overrides `@revision`).
    #[arg(long)]
    pub revision: Option<String>,
    /// Also copy the files into this directory (HF layout).
    #[arg(long)]
    pub to: Option<PathBuf>,
}

/// `bert download`: fetch into the cache, print the snapshot folder, optionally copy it.
pub fn download(args: &DownloadArgs) -> Result<()> {
    let mut id = ModelId::parse(&args.model_id).ok_or_else(|| {
        anyhow!(
            "{:?} is not a Hub model id (name, org/name, org/name@revision)",
            args.model_id
        )
    })?;
    if let Some(rev) = &args.revision {
        id.revision = rev.clone();
    }
    let snapshot = fetch(&id)?;
    if let Some(to) = &args.to {
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        for entry in std::fs::read_dir(&snapshot)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            // Snapshots hold symlinks into blobs/: copy the content.
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy to {}", target.display()))?;
        }
        eprintln!("copied {} into {}", id.repo, to.display());
    }
    println!("{}", snapshot.display());
    Ok(())
}
