//! `bert convert`: a model directory read strictly and written back in HF layout.

use std::path::PathBuf;

use anyhow::Result;
use bert_data::BertTokenizer;

use super::encode::{Loaded, exact_architecture};
use crate::backend::BackendKind;

/// Options of `bert convert`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvertArgs {
    /// Hugging Face model directory to read (safetensors or pickle `pytorch_model.bin`), or a
    /// Hub model id.
    #[arg(long)]
    pub model: PathBuf,
    /// Directory to write in HF layout: config.json, model.safetensors, tokenizer files.
    #[arg(long)]
    pub output: PathBuf,
}

/// `bert convert`: load a checkpoint strictly and write it back in HF layout with
/// safetensors weights (e.g. to turn a legacy `pytorch_model.bin` into `model.safetensors`).
pub fn convert(args: &ConvertArgs) -> Result<()> {
    let model_dir = crate::hub::resolve_model(&args.model)?;
    let config = bert_model::load_config(&model_dir)?;
    let kind = BackendKind::resolve(None)?;
    let architecture = exact_architecture(&config)?;
    crate::with_backend!(kind, |B, device| Loaded::<B>::new(
        architecture,
        &model_dir,
        &device
    )?
    .save(&config, &args.output)?);
    let has_tokenizer = ["tokenizer.json", "vocab.txt"]
        .iter()
        .any(|f| model_dir.join(f).is_file());
    if has_tokenizer {
        BertTokenizer::from_dir(&model_dir)?.save(&args.output)?;
    }
    eprintln!("wrote {} in Hugging Face layout", args.output.display());
    Ok(())
}
