//! Task heads on top of [`BertModel`], each mirroring its Hugging Face class:
//! [`BertForPreTraining`], [`BertForMaskedLM`], [`BertForSequenceClassification`],
//! [`BertForTokenClassification`], [`BertForQuestionAnswering`], [`BertForMultipleChoice`].
//!
//! Heads return logits; their losses are in [`crate::loss`]. The MLM decoder is tied to the word
//! embeddings: it has no weight of its own, only a bias (`cls.predictions.bias`).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::config::{BertConfig, HiddenAct};
use crate::dropout::Dropout;
use crate::layer_norm::LayerNorm;
use crate::model::{BertInput, BertModel, BertModelOutput, dropout, init_layer_norm, init_linear};
use crate::ops::{activation, dense};

/// Dense + activation + LayerNorm before the MLM decoder (HF `BertPredictionHeadTransform`).
#[derive(Module, Debug)]
pub struct BertPredictionHeadTransform<B: Backend> {
    /// `[H, H]`.
    pub dense: Linear<B>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// `hidden_act`.
    #[module(skip)]
    pub act: HiddenAct,
}

impl<B: Backend> BertPredictionHeadTransform<B> {
    /// HF-initialised transform.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            dense: init_linear(
                config.hidden_size,
                config.hidden_size,
                config.initializer_range,
                device,
            ),
            layer_norm: init_layer_norm(config, device),
            act: config.hidden_act,
        }
    }

    /// `[..., H]` → `[..., H]`.
    pub fn forward<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        self.layer_norm
            .forward(activation(self.act, self.dense.forward(hidden)))
    }
}

/// The MLM head (HF `BertLMPredictionHead`): transform, then the decoder tied to the word
/// embeddings, plus its own bias.
#[derive(Module, Debug)]
pub struct BertLMPredictionHead<B: Backend> {
    /// Transform before the decoder.
    pub transform: BertPredictionHeadTransform<B>,
    /// Decoder bias `[vocab_size]` (HF `cls.predictions.bias`).
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> BertLMPredictionHead<B> {
    /// HF-initialised head (zero bias).
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            transform: BertPredictionHeadTransform::new(config, device),
            bias: Param::from_tensor(Tensor::zeros([config.vocab_size], device)),
        }
    }

    /// - `hidden`: `[..., H]` (all positions, or only the gathered masked ones)
    /// - `word_embeddings`: the tied decoder weight `[vocab_size, H]`
    /// - returns `[..., vocab_size]`
    pub fn forward<const D: usize>(
        &self,
        hidden: Tensor<B, D>,
        word_embeddings: Tensor<B, 2>,
    ) -> Tensor<B, D> {
        let h = self.transform.forward(hidden);
        let decoder = word_embeddings.transpose().unsqueeze::<D>();
        h.matmul(decoder) + self.bias.val().unsqueeze::<D>()
    }
}

/// HF `BertOnlyMLMHead` (key `cls.predictions`).
#[derive(Module, Debug)]
pub struct BertOnlyMLMHead<B: Backend> {
    /// The MLM head.
    pub predictions: BertLMPredictionHead<B>,
}

/// HF `BertPreTrainingHeads`: MLM and NSP (key `cls`).
#[derive(Module, Debug)]
pub struct BertPreTrainingHeads<B: Backend> {
    /// The MLM head.
    pub predictions: BertLMPredictionHead<B>,
    /// NSP classifier `[H, 2]` on the pooled output.
    pub seq_relationship: Linear<B>,
}

/// Logits of [`BertForPreTraining`].
#[derive(Debug, Clone)]
pub struct PreTrainingOutput<B: Backend> {
    /// `[batch_size, seq_length, vocab_size]`.
    pub prediction_logits: Tensor<B, 3>,
    /// `[batch_size, 2]`; index 0 means "B follows A".
    pub seq_relationship_logits: Tensor<B, 2>,
    /// The encoder outputs.
    pub bert: BertModelOutput<B>,
}

/// BERT with MLM and NSP heads (HF `BertForPreTraining`).
#[derive(Module, Debug)]
pub struct BertForPreTraining<B: Backend> {
    /// The encoder (with pooler: NSP reads the pooled output).
    pub bert: BertModel<B>,
    /// MLM + NSP heads.
    pub cls: BertPreTrainingHeads<B>,
}

impl<B: Backend> BertForPreTraining<B> {
    /// A randomly initialised model.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            bert: BertModel::new(config, true, device),
            cls: BertPreTrainingHeads {
                predictions: BertLMPredictionHead::new(config, device),
                seq_relationship: init_linear(
                    config.hidden_size,
                    2,
                    config.initializer_range,
                    device,
                ),
            },
        }
    }

    /// MLM logits at every position and NSP logits.
    pub fn forward(&self, input: BertInput<B>, output_hidden_states: bool) -> PreTrainingOutput<B> {
        let bert = self.bert.forward(input, output_hidden_states);
        let prediction_logits = self.cls.predictions.forward(
            bert.last_hidden_state.clone(),
            self.bert.embeddings.word_embeddings.weight.val(),
        );
        let pooled = pooled_or_first(&bert);
        let seq_relationship_logits = self.cls.seq_relationship.forward(pooled);
        PreTrainingOutput {
            prediction_logits,
            seq_relationship_logits,
            bert,
        }
    }

    /// MLM logits only at the given flat positions (`[n]` indices into `batch·seq`), the lever
    /// that skips the vocab projection for the ~85 % unmasked tokens: returns `[n, vocab_size]`.
    pub fn mlm_logits_at(
        &self,
        hidden: Tensor<B, 3>,
        positions: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        let [batch, seq, width] = hidden.dims();
        let gathered = hidden.reshape([batch * seq, width]).select(0, positions);
        self.cls
            .predictions
            .forward(gathered, self.bert.embeddings.word_embeddings.weight.val())
    }
}

fn pooled_or_first<B: Backend>(out: &BertModelOutput<B>) -> Tensor<B, 2> {
    match &out.pooler_output {
        Some(p) => p.clone(),
        None => {
            let [batch, _, width] = out.last_hidden_state.dims();
            out.last_hidden_state
                .clone()
                .slice([0..batch, 0..1, 0..width])
                .reshape([batch, width])
        }
    }
}

/// BERT with the MLM head (HF `BertForMaskedLM`).
#[derive(Module, Debug)]
pub struct BertForMaskedLM<B: Backend> {
    /// The encoder (no pooler, as HF).
    pub bert: BertModel<B>,
    /// `cls.predictions`.
    pub cls: BertOnlyMLMHead<B>,
}

impl<B: Backend> BertForMaskedLM<B> {
    /// A randomly initialised model.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            bert: BertModel::new(config, false, device),
            cls: BertOnlyMLMHead {
                predictions: BertLMPredictionHead::new(config, device),
            },
        }
    }

    /// `[batch_size, seq_length, vocab_size]` logits and the encoder outputs.
    pub fn forward(
        &self,
        input: BertInput<B>,
        output_hidden_states: bool,
    ) -> (Tensor<B, 3>, BertModelOutput<B>) {
        let bert = self.bert.forward(input, output_hidden_states);
        let logits = self.cls.predictions.forward(
            bert.last_hidden_state.clone(),
            self.bert.embeddings.word_embeddings.weight.val(),
        );
        (logits, bert)
    }
}

/// Sentence (pair) classification or regression on the pooled output
/// (HF `BertForSequenceClassification`; `num_labels = 1` is regression).
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    /// The encoder with pooler.
    pub bert: BertModel<B>,
    /// Dropout before the classifier (`classifier_dropout`).
    pub dropout: Dropout,
    /// `[H, num_labels]`.
    pub classifier: Linear<B>,
}

impl<B: Backend> BertForSequenceClassification<B> {
    /// A randomly initialised model with `config.num_labels()` outputs.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            bert: BertModel::new(config, true, device),
            dropout: dropout(config.classifier_dropout()),
            classifier: init_linear(
                config.hidden_size,
                config.num_labels(),
                config.initializer_range,
                device,
            ),
        }
    }

    /// `[batch_size, num_labels]` logits and the encoder outputs.
    pub fn forward(
        &self,
        input: BertInput<B>,
        output_hidden_states: bool,
    ) -> (Tensor<B, 2>, BertModelOutput<B>) {
        let bert = self.bert.forward(input, output_hidden_states);
        let pooled = pooled_or_first(&bert);
        let logits = self.classifier.forward(self.dropout.forward(pooled));
        (logits, bert)
    }
}

/// Per-token classification (HF `BertForTokenClassification`).
#[derive(Module, Debug)]
pub struct BertForTokenClassification<B: Backend> {
    /// The encoder (no pooler, as HF).
    pub bert: BertModel<B>,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// `[H, num_labels]`.
    pub classifier: Linear<B>,
}

impl<B: Backend> BertForTokenClassification<B> {
    /// A randomly initialised model with `config.num_labels()` outputs.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            bert: BertModel::new(config, false, device),
            dropout: dropout(config.classifier_dropout()),
            classifier: init_linear(
                config.hidden_size,
                config.num_labels(),
                config.initializer_range,
                device,
            ),
        }
    }

    /// `[batch_size, seq_length, num_labels]` logits and the encoder outputs.
    pub fn forward(
        &self,
        input: BertInput<B>,
        output_hidden_states: bool,
    ) -> (Tensor<B, 3>, BertModelOutput<B>) {
        let bert = self.bert.forward(input, output_hidden_states);
        let logits = dense(
            &self.classifier,
            self.dropout.forward(bert.last_hidden_state.clone()),
        );
        (logits, bert)
    }
}

/// Extractive question answering: start and end logits per token
/// (HF `BertForQuestionAnswering`).
#[derive(Module, Debug)]
pub struct BertForQuestionAnswering<B: Backend> {
    /// The encoder (no pooler, as HF).
    pub bert: BertModel<B>,
    /// `[H, 2]`: start and end.
    pub qa_outputs: Linear<B>,
}

impl<B: Backend> BertForQuestionAnswering<B> {
    /// A randomly initialised model.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            bert: BertModel::new(config, false, device),
            qa_outputs: init_linear(config.hidden_size, 2, config.initializer_range, device),
        }
    }

    /// Start and end logits, each `[batch_size, seq_length]`, and the encoder outputs.
    pub fn forward(
        &self,
        input: BertInput<B>,
        output_hidden_states: bool,
    ) -> (Tensor<B, 2>, Tensor<B, 2>, BertModelOutput<B>) {
        let bert = self.bert.forward(input, output_hidden_states);
        let [batch, seq, _] = bert.last_hidden_state.dims();
        let logits = dense(&self.qa_outputs, bert.last_hidden_state.clone());
        let start = logits
            .clone()
            .slice([0..batch, 0..seq, 0..1])
            .reshape([batch, seq]);
        let end = logits.slice([0..batch, 0..seq, 1..2]).reshape([batch, seq]);
        (start, end, bert)
    }
}

/// Multiple choice: one score per (context, choice) pair on the pooled output
/// (HF `BertForMultipleChoice`).
#[derive(Module, Debug)]
pub struct BertForMultipleChoice<B: Backend> {
    /// The encoder with pooler.
    pub bert: BertModel<B>,
    /// Dropout before the classifier.
    pub dropout: Dropout,
    /// `[H, 1]`.
    pub classifier: Linear<B>,
}

impl<B: Backend> BertForMultipleChoice<B> {
    /// A randomly initialised model.
    pub fn new(config: &BertConfig, device: &B::Device) -> Self {
        Self {
            bert: BertModel::new(config, true, device),
            dropout: dropout(config.classifier_dropout()),
            classifier: init_linear(config.hidden_size, 1, config.initializer_range, device),
        }
    }

    /// Inputs are `[batch_size, num_choices, seq_length]` flattened to
    /// `[batch_size·num_choices, seq_length]` (choice-major within each example); returns
    /// `[batch_size, num_choices]` logits.
    pub fn forward(&self, input: BertInput<B>, num_choices: usize) -> Tensor<B, 2> {
        let [rows, _] = input.input_ids.dims();
        let bert = self.bert.forward(input, false);
        let pooled = pooled_or_first(&bert);
        let scores = self.classifier.forward(self.dropout.forward(pooled));
        scores.reshape([rows / num_choices.max(1), num_choices.max(1)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Tolerance;

    type B = Flex;

    fn small() -> BertConfig {
        let mut c = BertConfig::tiny().with_labels(&["a", "b", "c"]);
        c.vocab_size = 40;
        c.hidden_size = 8;
        c.intermediate_size = 16;
        c.max_position_embeddings = 16;
        c
    }

    fn input(device: &burn::tensor::Device<B>) -> BertInput<B> {
        BertInput::new(Tensor::from_ints([[2, 5, 7, 3], [2, 9, 3, 0]], device))
            .with_attention_mask(Tensor::from_ints([[1, 1, 1, 1], [1, 1, 1, 0]], device))
    }

    #[test]
    fn every_head_has_its_shape() {
        let device = Default::default();
        let c = small();
        let pre = BertForPreTraining::<B>::new(&c, &device).forward(input(&device), false);
        assert_eq!(pre.prediction_logits.dims(), [2, 4, 40]);
        assert_eq!(pre.seq_relationship_logits.dims(), [2, 2]);
        let (mlm, _) = BertForMaskedLM::<B>::new(&c, &device).forward(input(&device), false);
        assert_eq!(mlm.dims(), [2, 4, 40]);
        let (seq, _) =
            BertForSequenceClassification::<B>::new(&c, &device).forward(input(&device), false);
        assert_eq!(seq.dims(), [2, 3]);
        let (tok, _) =
            BertForTokenClassification::<B>::new(&c, &device).forward(input(&device), false);
        assert_eq!(tok.dims(), [2, 4, 3]);
        let (s, e, _) =
            BertForQuestionAnswering::<B>::new(&c, &device).forward(input(&device), false);
        assert_eq!((s.dims(), e.dims()), ([2, 4], [2, 4]));
        let mc = BertForMultipleChoice::<B>::new(&c, &device).forward(input(&device), 2);
        assert_eq!(mc.dims(), [1, 2]);
    }

    #[test]
    fn gathered_mlm_logits_equal_the_full_ones() {
        let device = Default::default();
        let model = BertForPreTraining::<B>::new(&small(), &device);
        let out = model.forward(input(&device), false);
        let positions = Tensor::<B, 1, Int>::from_ints([1, 6], &device);
        let gathered = model.mlm_logits_at(out.bert.last_hidden_state.clone(), positions);
        let full = out.prediction_logits.reshape([8, 40]);
        let expect = Tensor::cat(
            vec![full.clone().slice([1..2, 0..40]), full.slice([6..7, 0..40])],
            0,
        );
        gathered
            .into_data()
            .assert_approx_eq::<f32>(&expect.into_data(), Tolerance::absolute(1e-6));
    }

    #[test]
    fn decoder_is_tied_to_word_embeddings() {
        let device = Default::default();
        let model = BertForMaskedLM::<B>::new(&small(), &device);
        // The only vocab-sized matrix among the parameters is the word embedding table.
        assert_eq!(model.num_params(), {
            let c = small();
            let h = c.hidden_size;
            let per_layer = 4 * (h * h + h)
                + 2 * (2 * h)
                + (h * c.intermediate_size + c.intermediate_size)
                + (c.intermediate_size * h + h);
            let emb = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h;
            let head = h * h + h + 2 * h + c.vocab_size;
            emb + c.num_hidden_layers * per_layer + head
        });
    }
}
