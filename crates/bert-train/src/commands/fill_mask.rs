//! `bert fill-mask`: the most likely tokens for each `[MASK]` of a text, as transformers'
//! `fill-mask` pipeline (softmax over the vocabulary at each masked position).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bert_data::BertTokenizer;
use bert_model::{BertForMaskedLM, BertForPreTraining, BertInput, LoadOptions, load_pretrained};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor, TensorData};

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

/// The positions of `[MASK]` in `ids`; an error when there is none.
pub(crate) fn mask_positions(tokenizer: &BertTokenizer, ids: &[u32]) -> Result<Vec<usize>> {
    let mask_id = tokenizer.mask_id()?;
    let positions: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == mask_id).collect();
    if positions.is_empty() {
        bail!("the text has no [MASK] token");
    }
    Ok(positions)
}

/// The `top_k` most likely tokens at `position` of `ids`, by the softmax of that position's
/// vocabulary `logits`, with the text each one makes.
pub(crate) fn top_candidates(
    tokenizer: &BertTokenizer,
    ids: &[u32],
    position: usize,
    logits: &[f32],
    top_k: usize,
) -> Result<Vec<Candidate>> {
    let probs = crate::finetune::softmax(logits);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut list = Vec::new();
    for &id in order.iter().take(top_k.max(1)) {
        let mut filled = ids.to_vec();
        if let Some(slot) = filled.get_mut(position) {
            *slot = id as u32;
        }
        list.push(Candidate {
            score: probs[id],
            token: id as u32,
            token_str: tokenizer.decode(&[id as u32], false)?,
            sequence: tokenizer.decode(&filled, true)?,
        });
    }
    Ok(list)
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
    let encoded = tokenizer.encode(&args.text, None)?;
    let positions = mask_positions(&tokenizer, &encoded.input_ids)?;
    let row = |v: &[u32]| vec![v.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>()];
    let input = BertInput::<B>::from_rows(
        &row(&encoded.input_ids),
        &row(&encoded.token_type_ids),
        &row(&encoded.attention_mask),
        device,
    );
    let logits = mlm_logits(architecture_of(&config), dir, input, device)?;
    let [_, seq, vocab] = logits.dims();
    let at = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            positions.iter().map(|&p| p as i64).collect::<Vec<_>>(),
            [positions.len()],
        ),
        device,
    );
    let picked = crate::finetune::host(logits.reshape([seq, vocab]).select(0, at))?;
    positions
        .iter()
        .zip(picked.chunks(vocab.max(1)))
        .map(|(&p, logits)| top_candidates(&tokenizer, &encoded.input_ids, p, logits, args.top_k))
        .collect()
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
