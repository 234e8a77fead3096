//! Every head of the tiny random fixtures (`tests/fixtures/tiny-bert`, written by
//! `scripts/make_fixtures.py`) against transformers' outputs: shared by `parity.rs` (the fused
//! CPU kernels) and `parity_generic.rs` (the generic ops, the path a GPU takes).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bert_model::{
    BertForMaskedLM, BertForMultipleChoice, BertForPreTraining, BertForQuestionAnswering,
    BertForSequenceClassification, BertForTokenClassification, BertInput, BertModel, LoadOptions,
    PretrainedBert, load_pretrained,
};
use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};

pub type B = Flex;

pub const TOL: f32 = 1e-4;

pub fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-bert")
        .join(arch)
}

pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(arch: &str) -> Self {
        let path = fixture(arch).join("reference.safetensors");
        Self {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    fn data(&self, name: &str) -> TensorData {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("safetensors");
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference lacks {name}"));
        let shape = t.shape().to_vec();
        match t.dtype() {
            safetensors::Dtype::F32 => {
                let v: Vec<f32> = t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                TensorData::new(v, shape)
            }
            safetensors::Dtype::I64 => {
                let v: Vec<i64> = t
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                TensorData::new(v, shape)
            }
            other => panic!("unexpected dtype {other:?}"),
        }
    }

    fn int(&self, name: &str) -> Tensor<B, 2, Int> {
        Tensor::from_data(self.data(name), &Default::default())
    }

    pub fn input(&self) -> BertInput<B> {
        BertInput::new(self.int("input_ids"))
            .with_token_type_ids(self.int("token_type_ids"))
            .with_attention_mask(self.int("attention_mask"))
    }

    pub fn check<const D: usize>(&self, name: &str, actual: Tensor<B, D>) {
        let expected = self.data(name);
        assert_eq!(
            actual.dims().to_vec(),
            expected.shape.to_vec(),
            "{name} shape"
        );
        let a: Vec<f32> = actual.into_data().to_vec().expect("f32");
        let e: Vec<f32> = expected.to_vec().expect("f32");
        let worst = a
            .iter()
            .zip(&e)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= TOL, "{name}: max abs diff {worst} > {TOL}");
        // Guard against comparing two constant tensors.
        let spread =
            e.iter().copied().fold(f32::MIN, f32::max) - e.iter().copied().fold(f32::MAX, f32::min);
        assert!(spread > 1e-3, "{name}: reference is degenerate");
    }
}

pub fn load<M: PretrainedBert<B>>(arch: &str) -> M {
    let (model, _, report) =
        load_pretrained::<B, M>(fixture(arch), LoadOptions::strict(), &Default::default())
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
    assert!(
        report.missing.is_empty() && report.unexpected.is_empty(),
        "{report:?}"
    );
    model
}

pub fn check_hidden_states(r: &Reference, states: Option<Vec<Tensor<B, 3>>>) {
    let states = states.expect("hidden states requested");
    r.check("hidden_states", Tensor::stack::<4>(states, 0));
}

pub fn bert_model_matches_transformers() {
    let r = Reference::open("BertModel");
    let model: BertModel<B> = load("BertModel");
    let out = model.forward(r.input(), true);
    r.check("last_hidden_state", out.last_hidden_state);
    r.check("pooler_output", out.pooler_output.expect("pooler"));
    check_hidden_states(&r, out.hidden_states);
}

pub fn pretraining_heads_match_transformers() {
    let r = Reference::open("BertForPreTraining");
    let model: BertForPreTraining<B> = load("BertForPreTraining");
    let out = model.forward(r.input(), true);
    r.check("mlm_logits", out.prediction_logits);
    r.check("seq_relationship_logits", out.seq_relationship_logits);
    check_hidden_states(&r, out.bert.hidden_states);
}

pub fn masked_lm_with_gelu_tanh_matches_transformers() {
    let r = Reference::open("BertForMaskedLM");
    let model: BertForMaskedLM<B> = load("BertForMaskedLM");
    let (logits, out) = model.forward(r.input(), true);
    r.check("mlm_logits", logits);
    check_hidden_states(&r, out.hidden_states);
}

pub fn sequence_classification_from_pickle_matches_transformers() {
    assert!(
        fixture("BertForSequenceClassification")
            .join("pytorch_model.bin")
            .is_file()
    );
    let r = Reference::open("BertForSequenceClassification");
    let model: BertForSequenceClassification<B> = load("BertForSequenceClassification");
    let (logits, out) = model.forward(r.input(), true);
    r.check("seqcls_logits", logits);
    check_hidden_states(&r, out.hidden_states);
}

pub fn token_classification_with_relu_matches_transformers() {
    let r = Reference::open("BertForTokenClassification");
    let model: BertForTokenClassification<B> = load("BertForTokenClassification");
    let (logits, out) = model.forward(r.input(), true);
    r.check("tokcls_logits", logits);
    check_hidden_states(&r, out.hidden_states);
}

pub fn question_answering_matches_transformers() {
    let r = Reference::open("BertForQuestionAnswering");
    let model: BertForQuestionAnswering<B> = load("BertForQuestionAnswering");
    let (start, end, _) = model.forward(r.input(), false);
    r.check("qa_start_logits", start);
    r.check("qa_end_logits", end);
}

pub fn multiple_choice_matches_transformers() {
    let r = Reference::open("BertForMultipleChoice");
    let model: BertForMultipleChoice<B> = load("BertForMultipleChoice");
    let logits = model.forward(r.input(), 3);
    r.check("mc_logits", logits);
}
