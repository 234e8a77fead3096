//! The BERT encoder: [`BertEmbeddings`], [`BertEncoder`] (a stack of [`BertLayer`]),
//! [`BertPooler`] and [`BertModel`] joining them.
//!
//! Every struct mirrors the Hugging Face class of the same name and every field its attribute,
//! so a checkpoint key such as `encoder.layer.3.attention.output.dense.weight` names the field
//! path one to one (see [`crate::checkpoint`] for the few renames).
//!
//! Modules are built from the one [`BertConfig`], as in transformers: the `config.json` of a
//! checkpoint is the single source of every hyper-parameter.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};

use crate::config::{BertConfig, HiddenAct};
use crate::dropout::{Dropout, DropoutConfig};
use crate::layer_norm::{LayerNorm, LayerNormConfig};
use crate::ops;

/// A linear layer initialised as in HF BERT: weight `N(0, initializer_range)`, bias zero.
pub(crate) fn init_linear<B: Backend>(
    d_input: usize,
    d_output: usize,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    let weight = Tensor::random([d_input, d_output], Distribution::Normal(0.0, std), device);
    Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(Tensor::zeros([d_output], device))),
    }
}

/// A LayerNorm of `hidden_size` with `layer_norm_eps`, initialised to weight 1, bias 0 (made
/// eagerly, see [`crate::layer_norm`]).
pub(crate) fn init_layer_norm<B: Backend>(config: &BertConfig, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(config.hidden_size)
        .with_epsilon(config.layer_norm_eps)
        .init(device)
}

fn init_embedding<B: Backend>(
    n: usize,
    d: usize,
    std: f64,
    padding_idx: Option<usize>,
    device: &B::Device,
) -> Embedding<B> {
    let mut weight = Tensor::random([n, d], Distribution::Normal(0.0, std), device);
    if let Some(pad) = padding_idx.filter(|&p| p < n) {
        weight = weight.slice_assign([pad..pad + 1, 0..d], Tensor::zeros([1, d], device));
    }
    Embedding {
        weight: Param::from_tensor(weight),
    }
}

pub(crate) fn dropout(p: f64) -> Dropout {
    DropoutConfig::new(p).init()
}

/// Word + learned absolute position + token type embeddings, LayerNorm, dropout
/// (HF `BertEmbeddings`).
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// `[vocab_size, H]`.
    pub word_embeddings: Embedding<B>,
    /// `[max_position_embeddings, H]`.
    pub position_embeddings: Embedding<B>,
    /// `[type_vocab_size, H]`.
    pub token_type_embeddings: Embedding<B>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
}

impl<B: Backend> BertEmbeddings<B> {
    /// HF-initialised embeddings (the padding row of the word embeddings is zero).
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        let std = config.initializer_range;
        Self {
            word_embeddings: init_embedding(
                config.vocab_size,
                config.hidden_size,
                std,
                Some(config.pad_token_id),
                device,
            ),
            position_embeddings: init_embedding(
                config.max_position_embeddings,
                config.hidden_size,
                std,
                None,
                device,
            ),
            token_type_embeddings: init_embedding(
                config.type_vocab_size,
                config.hidden_size,
                std,
                None,
                device,
            ),
            layer_norm: init_layer_norm(config, device),
            dropout: dropout(config.hidden_dropout_prob),
        }
    }

    /// - `input_ids`: `[batch_size, seq_length]`
    /// - `token_type_ids`: `[batch_size, seq_length]`
    /// - returns `[batch_size, seq_length, hidden_size]`
    ///
    /// Positions are `0..seq_length`. Ids must be inside their tables (checked by the input
    /// builders of the data crate and the CLI, not here).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .expand([batch, seq]);
        let x = self.word_embeddings.forward(input_ids)
            + self.token_type_embeddings.forward(token_type_ids)
            + self.position_embeddings.forward(positions);
        self.dropout.forward(self.layer_norm.forward(x))
    }
}

/// Multi-head self-attention projections (HF `BertSelfAttention`, key `attention.self`).
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    /// Query projection `[H, H]`.
    pub query: Linear<B>,
    /// Key projection `[H, H]`.
    pub key: Linear<B>,
    /// Value projection `[H, H]`.
    pub value: Linear<B>,
    /// Dropout on attention probabilities.
    pub dropout: Dropout,
    /// Number of heads.
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Backend> BertSelfAttention<B> {
    /// HF-initialised self-attention.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        let h = config.hidden_size;
        let std = config.initializer_range;
        Self {
            query: init_linear(h, h, std, device),
            key: init_linear(h, h, std, device),
            value: init_linear(h, h, std, device),
            dropout: dropout(config.attention_probs_dropout_prob),
            num_heads: config.num_attention_heads,
        }
    }

    /// - `hidden`: `[batch_size, seq_length, H]`
    /// - `mask_bias`: `[batch_size, 1, 1, seq_length]`, 0 for tokens to attend to and a large
    ///   negative number for padding (see [`attention_mask_bias`])
    /// - returns the context `[batch_size, seq_length, H]`
    pub fn forward(&self, hidden: Tensor<B, 3>, mask_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        ops::self_attention(
            &self.query,
            &self.key,
            &self.value,
            self.num_heads,
            &self.dropout,
            hidden,
            mask_bias,
        )
    }
}

/// Output projection, dropout, residual and LayerNorm of the attention block
/// (HF `BertSelfOutput`, key `attention.output`).
#[derive(Module, Debug)]
pub struct BertSelfOutput<B: Backend> {
    /// `[H, H]`.
    pub dense: Linear<B>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// Dropout before the residual.
    pub dropout: Dropout,
}

impl<B: Backend> BertSelfOutput<B> {
    /// HF-initialised block.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            dense: init_linear(
                config.hidden_size,
                config.hidden_size,
                config.initializer_range,
                device,
            ),
            layer_norm: init_layer_norm(config, device),
            dropout: dropout(config.hidden_dropout_prob),
        }
    }

    /// `LayerNorm(dropout(dense(hidden)) + residual)`, all `[batch_size, seq_length, H]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        ops::dense_add_layer_norm(
            &self.dense,
            &self.dropout,
            hidden,
            residual,
            &self.layer_norm,
        )
    }
}

/// Self-attention and its output block (HF `BertAttention`). HF's `self` is `self_attn` here.
#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// HF `attention.self`.
    pub self_attn: BertSelfAttention<B>,
    /// HF `attention.output`.
    pub output: BertSelfOutput<B>,
}

impl<B: Backend> BertAttention<B> {
    /// HF-initialised attention block.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            self_attn: BertSelfAttention::new(config, device),
            output: BertSelfOutput::new(config, device),
        }
    }

    /// `[batch_size, seq_length, H]` → `[batch_size, seq_length, H]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, mask_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let context = self.self_attn.forward(hidden.clone(), mask_bias);
        self.output.forward(context, hidden)
    }
}

/// First half of the feed-forward block (HF `BertIntermediate`).
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    /// `[H, intermediate_size]`.
    pub dense: Linear<B>,
    /// `hidden_act`.
    #[module(skip)]
    pub act: HiddenAct,
}

impl<B: Backend> BertIntermediate<B> {
    /// HF-initialised block.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            dense: init_linear(
                config.hidden_size,
                config.intermediate_size,
                config.initializer_range,
                device,
            ),
            act: config.hidden_act,
        }
    }

    /// `[batch_size, seq_length, H]` → `[batch_size, seq_length, intermediate_size]`.
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        ops::dense_activation(&self.dense, self.act, hidden)
    }
}

/// Second half of the feed-forward block with residual and LayerNorm (HF `BertOutput`).
#[derive(Module, Debug)]
pub struct BertOutput<B: Backend> {
    /// `[intermediate_size, H]`.
    pub dense: Linear<B>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// Dropout before the residual.
    pub dropout: Dropout,
}

impl<B: Backend> BertOutput<B> {
    /// HF-initialised block.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            dense: init_linear(
                config.intermediate_size,
                config.hidden_size,
                config.initializer_range,
                device,
            ),
            layer_norm: init_layer_norm(config, device),
            dropout: dropout(config.hidden_dropout_prob),
        }
    }

    /// - `hidden`: `[batch_size, seq_length, intermediate_size]`
    /// - `residual`: `[batch_size, seq_length, H]`
    /// - returns `[batch_size, seq_length, H]`
    pub fn forward(&self, hidden: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        ops::dense_add_layer_norm(
            &self.dense,
            &self.dropout,
            hidden,
            residual,
            &self.layer_norm,
        )
    }
}

/// One transformer layer (HF `BertLayer`).
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// Attention block.
    pub attention: BertAttention<B>,
    /// Feed-forward, first half.
    pub intermediate: BertIntermediate<B>,
    /// Feed-forward, second half.
    pub output: BertOutput<B>,
}

impl<B: Backend> BertLayer<B> {
    /// HF-initialised layer.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            attention: BertAttention::new(config, device),
            intermediate: BertIntermediate::new(config, device),
            output: BertOutput::new(config, device),
        }
    }

    /// `[batch_size, seq_length, H]` → `[batch_size, seq_length, H]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, mask_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let attended = self.attention.forward(hidden, mask_bias);
        let inner = self.intermediate.forward(attended.clone());
        self.output.forward(inner, attended)
    }
}

/// The layer stack (HF `BertEncoder`, keys `encoder.layer.N`).
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    /// `num_hidden_layers` layers.
    pub layer: Vec<BertLayer<B>>,
}

impl<B: Backend> BertEncoder<B> {
    /// HF-initialised encoder.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            layer: (0..config.num_hidden_layers)
                .map(|_| BertLayer::new(config, device))
                .collect(),
        }
    }

    /// Runs every layer on `[batch_size, seq_length, H]`. When `all_hidden_states` is set, the
    /// input and every layer's output are returned too (`L + 1` tensors, as HF).
    pub fn forward(
        &self,
        mut hidden: Tensor<B, 3>,
        mask_bias: Tensor<B, 4>,
        all_hidden_states: bool,
    ) -> (Tensor<B, 3>, Option<Vec<Tensor<B, 3>>>) {
        let mut states = all_hidden_states.then(|| vec![hidden.clone()]);
        for layer in &self.layer {
            hidden = layer.forward(hidden, mask_bias.clone());
            if let Some(states) = states.as_mut() {
                states.push(hidden.clone());
            }
        }
        (hidden, states)
    }
}

/// `tanh(dense(h[:, 0]))` (HF `BertPooler`).
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    /// `[H, H]`.
    pub dense: Linear<B>,
}

impl<B: Backend> BertPooler<B> {
    /// HF-initialised pooler.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            dense: init_linear(
                config.hidden_size,
                config.hidden_size,
                config.initializer_range,
                device,
            ),
        }
    }

    /// `[batch_size, seq_length, H]` → `[batch_size, H]` from the first (`[CLS]`) token.
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, _, width] = hidden.dims();
        let first = hidden
            .slice([0..batch, 0..1, 0..width])
            .reshape([batch, width]);
        self.dense.forward(first).tanh()
    }
}

/// The inputs of a BERT forward pass.
#[derive(Debug, Clone)]
pub struct BertInput<B: Backend> {
    /// `[batch_size, seq_length]` WordPiece ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch_size, seq_length]` segment ids (zeros when `None`).
    pub token_type_ids: Option<Tensor<B, 2, Int>>,
    /// `[batch_size, seq_length]`, 1 for real tokens and 0 for padding (all ones when `None`).
    pub attention_mask: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> BertInput<B> {
    /// Input ids only: one segment, no padding.
    pub fn new(input_ids: Tensor<B, 2, Int>) -> Self {
        Self {
            input_ids,
            token_type_ids: None,
            attention_mask: None,
        }
    }

    /// Sets the segment ids.
    pub fn with_token_type_ids(mut self, token_type_ids: Tensor<B, 2, Int>) -> Self {
        self.token_type_ids = Some(token_type_ids);
        self
    }

    /// Sets the attention mask.
    pub fn with_attention_mask(mut self, attention_mask: Tensor<B, 2, Int>) -> Self {
        self.attention_mask = Some(attention_mask);
        self
    }

    /// Builds the input from host data, `[batch_size, seq_length]` row-major.
    pub fn from_rows(
        input_ids: &[Vec<i64>],
        token_type_ids: &[Vec<i64>],
        attention_mask: &[Vec<i64>],
        device: &B::Device,
    ) -> Self {
        let to_tensor = |rows: &[Vec<i64>]| {
            let batch = rows.len();
            let seq = rows.first().map_or(0, Vec::len);
            let flat: Vec<i64> = rows.iter().flatten().copied().collect();
            Tensor::<B, 1, Int>::from_ints(flat.as_slice(), device).reshape([batch, seq])
        };
        Self {
            input_ids: to_tensor(input_ids),
            token_type_ids: Some(to_tensor(token_type_ids)),
            attention_mask: Some(to_tensor(attention_mask)),
        }
    }
}

/// Additive attention bias from a `[batch_size, seq_length]` 0/1 mask:
/// `[batch_size, 1, 1, seq_length]` with 0 where the mask is 1 and the dtype's lowest value
/// where it is 0 (HF's `(1 - mask) * finfo.min`).
pub fn attention_mask_bias<B: Backend>(mask: Tensor<B, 2, Int>) -> Tensor<B, 4> {
    let [batch, seq] = mask.dims();
    let keep = mask.float();
    ((keep.neg() + 1.0) * f32::MIN as f64).reshape([batch, 1, 1, seq])
}

/// The outputs of [`BertModel::forward`].
#[derive(Debug, Clone)]
pub struct BertModelOutput<B: Backend> {
    /// `[batch_size, seq_length, H]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch_size, H]`, when the model has a pooler.
    pub pooler_output: Option<Tensor<B, 2>>,
    /// `L + 1` tensors `[batch_size, seq_length, H]` (embeddings, then each layer), on request.
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
}

/// The bare BERT encoder (HF `BertModel`): embeddings, layers and an optional pooler.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    /// Input embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// Transformer layers.
    pub encoder: BertEncoder<B>,
    /// `[CLS]` pooler (absent in checkpoints saved without one, e.g. HF `BertForMaskedLM`).
    pub pooler: Option<BertPooler<B>>,
}

impl<B: Backend> BertModel<B> {
    /// A randomly initialised model (HF's init); `add_pooling_layer` as in transformers.
    pub fn new(config: &BertConfig, add_pooling_layer: bool, device: &B::Device) -> Self {
        Self {
            embeddings: BertEmbeddings::new(config, device),
            encoder: BertEncoder::new(config, device),
            pooler: add_pooling_layer.then(|| BertPooler::new(config, device)),
        }
    }

    /// Runs the encoder. Shapes: see [`BertInput`] and [`BertModelOutput`].
    pub fn forward(&self, input: BertInput<B>, output_hidden_states: bool) -> BertModelOutput<B> {
        let [batch, seq] = input.input_ids.dims();
        let device = input.input_ids.device();
        let token_type_ids = input
            .token_type_ids
            .unwrap_or_else(|| Tensor::zeros([batch, seq], &device));
        let mask = input
            .attention_mask
            .unwrap_or_else(|| Tensor::ones([batch, seq], &device));
        let embedded = self.embeddings.forward(input.input_ids, token_type_ids);
        let (last_hidden_state, hidden_states) =
            self.encoder
                .forward(embedded, attention_mask_bias(mask), output_hidden_states);
        let pooler_output = self
            .pooler
            .as_ref()
            .map(|p| p.forward(last_hidden_state.clone()));
        BertModelOutput {
            last_hidden_state,
            pooler_output,
            hidden_states,
        }
    }
}

/// Mean of the hidden states over real tokens: `[batch_size, seq_length, H]` with a
/// `[batch_size, seq_length]` mask → `[batch_size, H]` (sentence-transformers' mean pooling).
pub fn masked_mean<B: Backend>(hidden: Tensor<B, 3>, mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [batch, seq, width] = hidden.dims();
    let weights = mask.float().reshape([batch, seq, 1]);
    let summed = (hidden * weights.clone())
        .sum_dim(1)
        .reshape([batch, width]);
    let counts = weights.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
    summed / counts
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
