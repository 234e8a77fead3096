//! `bert encode`: run a model directory over a JSONL file and store every output in one
//! safetensors file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bert_data::{BertTokenizer, PaddedBatch, Padding, Truncation, pad_rows};
use bert_model::checkpoint::write_safetensors;
use bert_model::{
    Architecture, BertConfig, BertForMaskedLM, BertForMultipleChoice, BertForPreTraining,
    BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification, BertInput,
    BertModel, BertModelOutput, LoadOptions, PretrainedBert, load_pretrained, masked_mean,
    save_pretrained,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor, TensorData};

use crate::backend::BackendKind;
use crate::input::{InputLine, read_jsonl};

/// Options of `bert encode`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodeArgs {
    /// Hugging Face model directory (config.json, model.safetensors or pytorch_model.bin,
    /// tokenizer.json or vocab.txt), or a Hub model id (`bert-base-uncased`, `org/name@rev`).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL input: {"text": ..., "text_pair": ...} or {"input_ids": [...], ...} per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub output: PathBuf,
    /// Truncate text inputs to this many tokens (longest-first).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Also store all hidden states ([L+1, N, T, H]).
    #[arg(long)]
    pub hidden_states: bool,
    /// cpu, wgpu or cuda (default: the best compiled in).
    #[arg(long)]
    pub backend: Option<String>,
}

/// The head named by the first entry of `architectures` that this crate implements; the bare
/// encoder when none is (its outputs are what `bert encode` needs).
pub fn architecture_of(config: &BertConfig) -> Architecture {
    config
        .architectures
        .iter()
        .find_map(|a| Architecture::from_name(a))
        .unwrap_or(Architecture::Base)
}

/// Like [`architecture_of`], but an architecture this crate cannot represent is an error (a
/// conversion must not drop a head silently).
pub fn exact_architecture(config: &BertConfig) -> Result<Architecture> {
    match config.architectures.first() {
        None => Ok(Architecture::Base),
        Some(name) => Ok(name.parse::<Architecture>()?),
    }
}

/// `(input_ids, token_type_ids, attention_mask)` of one input, unpadded.
pub type EncodedRow = (Vec<u32>, Vec<u32>, Vec<u32>);

/// Reads inputs, tokenizes text lines, validates ids against the config.
pub fn encode_lines(
    lines: &[(usize, InputLine)],
    model_dir: &Path,
    config: &BertConfig,
    max_length: Option<usize>,
    input: &Path,
) -> Result<Vec<EncodedRow>> {
    let needs_tokenizer = lines
        .iter()
        .any(|(_, l)| matches!(l, InputLine::Text { .. }));
    let tokenizer = if needs_tokenizer {
        let t = BertTokenizer::from_dir(model_dir)
            .with_context(|| format!("cannot load the tokenizer of {}", model_dir.display()))?;
        Some(match max_length {
            Some(n) => t.with_truncation(n, Truncation::LongestFirst)?,
            None => t,
        })
    } else {
        None
    };
    let limit = max_length
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
    let mut rows = Vec::with_capacity(lines.len());
    for (number, line) in lines {
        let at = || format!("{}:{number}", input.display());
        let row = match (line, &tokenizer) {
            (InputLine::Text { text, text_pair }, Some(tok)) => {
                let e = tok.encode(text, text_pair.as_deref()).with_context(at)?;
                (e.input_ids, e.token_type_ids, e.attention_mask)
            }
            (
                InputLine::Ids {
                    input_ids,
                    token_type_ids,
                    attention_mask,
                },
                _,
            ) => (
                input_ids.clone(),
                token_type_ids.clone(),
                attention_mask.clone(),
            ),
            (InputLine::Text { .. }, None) => unreachable!("tokenizer loaded for text lines"),
        };
        if row.0.len() > limit {
            bail!(
                "{}: {} tokens, more than the limit of {limit} (max_position_embeddings {}); pass --max-length to truncate text inputs",
                at(),
                row.0.len(),
                config.max_position_embeddings
            );
        }
        if let Some(id) = row.0.iter().find(|&&id| id as usize >= config.vocab_size) {
            bail!(
                "{}: token id {id} is outside the vocabulary of {}",
                at(),
                config.vocab_size
            );
        }
        if let Some(t) = row
            .1
            .iter()
            .find(|&&t| t as usize >= config.type_vocab_size)
        {
            bail!(
                "{}: token type id {t} is outside type_vocab_size {}",
                at(),
                config.type_vocab_size
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Host-side accumulation of a batch-major output.
#[derive(Default)]
struct Collected {
    tail: Vec<usize>,
    rows: usize,
    data: Vec<f32>,
}

impl Collected {
    fn push<B: Backend, const D: usize>(&mut self, tensor: Tensor<B, D>) -> Result<()> {
        let dims = tensor.dims();
        self.tail = dims[1..].to_vec();
        self.rows += dims[0];
        let values: Vec<f32> = tensor
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("cannot read tensor: {e:?}"))?;
        self.data.extend(values);
        Ok(())
    }

    fn into_data(self) -> TensorData {
        let mut shape = vec![self.rows];
        shape.extend(self.tail);
        TensorData::new(self.data, shape)
    }
}

/// Everything a forward pass produced, by output name.
pub(crate) struct Outputs<B: Backend> {
    pub(crate) bert: BertModelOutput<B>,
    pub(crate) heads: Vec<(&'static str, HeadOutput<B>)>,
}

pub(crate) enum HeadOutput<B: Backend> {
    Rank2(Tensor<B, 2>),
    Rank3(Tensor<B, 3>),
}

// One value per run: the size difference between heads does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Loaded<B: Backend> {
    Base(BertModel<B>),
    PreTraining(BertForPreTraining<B>),
    MaskedLm(BertForMaskedLM<B>),
    SequenceClassification(BertForSequenceClassification<B>),
    TokenClassification(BertForTokenClassification<B>),
    QuestionAnswering(BertForQuestionAnswering<B>),
    MultipleChoice(BertForMultipleChoice<B>),
}

fn load<B: Backend, M: PretrainedBert<B>>(dir: &Path, device: &Device<B>) -> Result<M> {
    let (model, _, report) = load_pretrained::<B, M>(dir, LoadOptions::strict(), device)
        .with_context(|| format!("cannot load the model in {}", dir.display()))?;
    if !report.ignored.is_empty() {
        eprintln!(
            "note: {} checkpoint entries not used by {} (buffers, tied or other heads' weights)",
            report.ignored.len(),
            M::ARCHITECTURE
        );
    }
    Ok(model)
}

impl<B: Backend> Loaded<B> {
    pub(crate) fn new(arch: Architecture, dir: &Path, device: &Device<B>) -> Result<Self> {
        Ok(match arch {
            Architecture::Base => Self::Base(load(dir, device)?),
            Architecture::PreTraining => Self::PreTraining(load(dir, device)?),
            Architecture::MaskedLm => Self::MaskedLm(load(dir, device)?),
            Architecture::SequenceClassification => {
                Self::SequenceClassification(load(dir, device)?)
            }
            Architecture::TokenClassification => Self::TokenClassification(load(dir, device)?),
            Architecture::QuestionAnswering => Self::QuestionAnswering(load(dir, device)?),
            Architecture::MultipleChoice => Self::MultipleChoice(load(dir, device)?),
        })
    }

    /// Writes the model in HF layout (config.json + model.safetensors).
    pub(crate) fn save(&self, config: &BertConfig, dir: &Path) -> Result<()> {
        match self {
            Self::Base(m) => save_pretrained(m, config, dir)?,
            Self::PreTraining(m) => save_pretrained(m, config, dir)?,
            Self::MaskedLm(m) => save_pretrained(m, config, dir)?,
            Self::SequenceClassification(m) => save_pretrained(m, config, dir)?,
            Self::TokenClassification(m) => save_pretrained(m, config, dir)?,
            Self::QuestionAnswering(m) => save_pretrained(m, config, dir)?,
            Self::MultipleChoice(m) => save_pretrained(m, config, dir)?,
        }
        Ok(())
    }

    pub(crate) fn forward(&self, input: BertInput<B>, hidden: bool) -> Outputs<B> {
        use HeadOutput::{Rank2, Rank3};
        match self {
            Self::Base(m) => Outputs {
                bert: m.forward(input, hidden),
                heads: vec![],
            },
            Self::MultipleChoice(m) => Outputs {
                bert: m.bert.forward(input, hidden),
                heads: vec![],
            },
            Self::PreTraining(m) => {
                let out = m.forward(input, hidden);
                Outputs {
                    bert: out.bert,
                    heads: vec![
                        ("mlm_logits", Rank3(out.prediction_logits)),
                        (
                            "seq_relationship_logits",
                            Rank2(out.seq_relationship_logits),
                        ),
                    ],
                }
            }
            Self::MaskedLm(m) => {
                let (logits, bert) = m.forward(input, hidden);
                Outputs {
                    bert,
                    heads: vec![("mlm_logits", Rank3(logits))],
                }
            }
            Self::SequenceClassification(m) => {
                let (logits, bert) = m.forward(input, hidden);
                Outputs {
                    bert,
                    heads: vec![("seqcls_logits", Rank2(logits))],
                }
            }
            Self::TokenClassification(m) => {
                let (logits, bert) = m.forward(input, hidden);
                Outputs {
                    bert,
                    heads: vec![("tokcls_logits", Rank3(logits))],
                }
            }
            Self::QuestionAnswering(m) => {
                let (start, end, bert) = m.forward(input, hidden);
                Outputs {
                    bert,
                    heads: vec![
                        ("qa_start_logits", Rank2(start)),
                        ("qa_end_logits", Rank2(end)),
                    ],
                }
            }
        }
    }
}

/// Runs the model over the padded rows and returns every named output.
pub fn run_model<B: Backend>(
    device: &Device<B>,
    dir: &Path,
    config: &BertConfig,
    batch: &PaddedBatch,
    batch_size: usize,
    hidden_states: bool,
) -> Result<Vec<(String, TensorData)>> {
    let model = Loaded::<B>::new(architecture_of(config), dir, device)?;
    let mut collected: BTreeMap<String, Collected> = BTreeMap::new();
    let mut layers: Vec<Collected> = Vec::new();
    let progress = crate::progress::bar(batch.len() as u64, "encoding");
    let batch_size = batch_size.max(1);
    for start in (0..batch.len()).step_by(batch_size) {
        let rows = batch.rows(start..(start + batch_size).min(batch.len()));
        let input = BertInput::from_rows(
            &rows.input_ids,
            &rows.token_type_ids,
            &rows.attention_mask,
            device,
        );
        let mask = input.attention_mask.clone().expect("set by from_rows");
        let out = model.forward(input, hidden_states);
        fn put<'a>(c: &'a mut BTreeMap<String, Collected>, name: &str) -> &'a mut Collected {
            c.entry(name.to_string()).or_default()
        }
        let c = &mut collected;
        put(c, "mean_pooled").push(masked_mean(out.bert.last_hidden_state.clone(), mask))?;
        put(c, "last_hidden_state").push(out.bert.last_hidden_state)?;
        if let Some(p) = out.bert.pooler_output {
            put(c, "pooler_output").push(p)?;
        }
        for (name, t) in out.heads {
            match t {
                HeadOutput::Rank2(t) => put(c, name).push(t)?,
                HeadOutput::Rank3(t) => put(c, name).push(t)?,
            }
        }
        if let Some(states) = out.bert.hidden_states {
            layers.resize_with(states.len(), Collected::default);
            for (layer, state) in layers.iter_mut().zip(states) {
                layer.push(state)?;
            }
        }
        progress.inc(rows.len() as u64);
    }
    progress.finish_and_clear();
    let mut outputs: Vec<(String, TensorData)> = collected
        .into_iter()
        .map(|(k, v)| (k, v.into_data()))
        .collect();
    if !layers.is_empty() {
        let count = layers.len();
        let mut shape = vec![count, layers[0].rows];
        shape.extend(layers[0].tail.clone());
        let data: Vec<f32> = layers.into_iter().flat_map(|l| l.data).collect();
        outputs.push(("hidden_states".into(), TensorData::new(data, shape)));
    }
    Ok(outputs)
}

/// `bert encode`.
pub fn run(args: &EncodeArgs) -> Result<()> {
    let model_dir = crate::hub::resolve_model(&args.model)?;
    let kind = BackendKind::resolve(args.backend.as_deref())?;
    let config = bert_model::load_config(&model_dir)?;
    let lines = read_jsonl(&args.input)?;
    let rows = encode_lines(&lines, &model_dir, &config, args.max_length, &args.input)?;
    let batch = pad_rows(
        rows.iter()
            .map(|(a, b, c)| (a.as_slice(), b.as_slice(), c.as_slice())),
        config.pad_token_id as u32,
        Padding::default(),
    );
    let outputs = crate::with_backend!(kind, |B, device| run_model::<B>(
        &device,
        &model_dir,
        &config,
        &batch,
        args.batch_size,
        args.hidden_states
    )?);
    let shape = [batch.len(), batch.seq_len];
    let mut tensors = vec![
        (
            "input_ids".to_string(),
            TensorData::new(PaddedBatch::flat(&batch.input_ids), shape),
        ),
        (
            "token_type_ids".to_string(),
            TensorData::new(PaddedBatch::flat(&batch.token_type_ids), shape),
        ),
        (
            "attention_mask".to_string(),
            TensorData::new(PaddedBatch::flat(&batch.attention_mask), shape),
        ),
    ];
    tensors.extend(outputs);
    if let Some(parent) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write_safetensors(&args.output, &tensors)?;
    eprintln!(
        "encoded {} rows of {} tokens on {kind} into {}",
        batch.len(),
        batch.seq_len,
        args.output.display()
    );
    Ok(())
}
