//! `bert fill-mask`: the most likely tokens for each `[MASK]` of a text, as transformers'
//! `fill-mask` pipeline (softmax over the vocabulary at each masked position).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bert_data::BertTokenizer;
use bert_model::{BertForMaskedLM, BertForPreTraining, BertInput, LoadOptions, load_pretrained};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor};

use crate::backend::BackendKind;
use bert_model::Architecture;

use super::encode::architecture_of;

/// Options of `bert fill-mask`.
#[derive(Debug, Clone, clap::Args)]
pub struct FillMaskArgs {
    /// Model directory or Hub id with an MLM head (BertForMaskedLM or BertForPreTraining).
    #[arg(long)]
    pub model: PathBuf,
    /// Text with one or more `[MASK]` tokens.
    pub text: String,
    /// Candidates per mask.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// cpu, wgpu or cuda (default: the best compiled in).
    #[arg(long)]
    pub backend: Option<String>,
}

/// One candidate for one mask.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Candidate {
    /// Probability.
    pub score: f32,
    /// Token id.
    pub token: u32,
    /// Token text.
    pub token_str: String,
    /// The text with this token in place of the mask.
    pub sequence: String,
}

fn mlm_logits<B: Backend>(
    arch: Architecture,
    dir: &std::path::Path,
    input: BertInput<B>,
    device: &Device<B>,
) -> Result<Tensor<B, 3>> {
    let options = LoadOptions::strict();
    Ok(match arch {
        Architecture::MaskedLm => {
            let (m, _, _) = load_pretrained::<B, BertForMaskedLM<B>>(dir, options, device)?;
            m.forward(input, false).0
        }
        Architecture::PreTraining => {
            let (m, _, _) = load_pretrained::<B, BertForPreTraining<B>>(dir, options, device)?;
            m.forward(input, false).prediction_logits
        }
        other => bail!(
            "{} has no MLM head ({other:?}); fill-mask needs BertForMaskedLM or BertForPreTraining",
            dir.display()
        ),
    })
}

fn candidates<B: Backend>(
    dir: &std::path::Path,
    args: &FillMaskArgs,
    device: &Device<B>,
) -> Result<Vec<Vec<Candidate>>> {
    let config = bert_model::load_config(dir)?;
    let tokenizer = BertTokenizer::from_dir(dir)
        .with_context(|| format!("cannot load the tokenizer of {}", dir.display()))?
        .with_truncation(
            config.max_position_embeddings,
            bert_data::Truncation::LongestFirst,
        )?;
    let mask_id = tokenizer.mask_id()?;
    let encoded = tokenizer.encode(&args.text, None)?;
    let positions: Vec<usize> = (0..encoded.len())
        .filter(|&i| encoded.input_ids[i] == mask_id)
        .collect();
    if positions.is_empty() {
        bail!("the text has no [MASK] token");
    }
    let row = |v: &[u32]| vec![v.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>()];
    let input = BertInput::<B>::from_rows(
        &row(&encoded.input_ids),
        &row(&encoded.token_type_ids),
        &row(&encoded.attention_mask),
        device,
    );
    let logits = mlm_logits(architecture_of(&config), dir, input, device)?;
    let [_, seq, vocab] = logits.dims();
    let probs: Vec<f32> = softmax(logits.reshape([seq, vocab]), 1)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("cannot read logits: {e:?}"))?;
    let mut out = Vec::new();
    for &p in &positions {
        let row = &probs[p * vocab..(p + 1) * vocab];
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let mut list = Vec::new();
        for &id in order.iter().take(args.top_k.max(1)) {
            let mut ids = encoded.input_ids.clone();
            ids[p] = id as u32;
            list.push(Candidate {
                score: row[id],
                token: id as u32,
                token_str: tokenizer.decode(&[id as u32], false)?,
                sequence: tokenizer.decode(&ids, true)?,
            });
        }
        out.push(list);
    }
    Ok(out)
}

/// `bert fill-mask`.
pub fn run(args: &FillMaskArgs) -> Result<()> {
    let kind = BackendKind::resolve(args.backend.as_deref())?;
    let dir = crate::hub::resolve_model(&args.model)?;
    let results = crate::with_backend!(kind, |B, device| candidates::<B>(&dir, args, &device)?);
    if args.json {
        println!("{}", serde_json::to_string(&results)?);
        return Ok(());
    }
    for (i, list) in results.iter().enumerate() {
        if results.len() > 1 {
            println!("[MASK] #{}", i + 1);
        }
        for c in list {
            println!("{:.4}  {:<15} {}", c.score, c.token_str, c.sequence);
        }
    }
    Ok(())
}
