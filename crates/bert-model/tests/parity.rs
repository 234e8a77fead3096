//! Every head against Hugging Face transformers on a small random BERT (every parameter random,
//! LayerNorm and biases included), from `tests/fixtures/tiny-bert` written by
//! `scripts/make_fixtures.py`. Also: export round trips and strict-load errors.

use std::path::{Path, PathBuf};

use bert_model::checkpoint::{hf_state_dict, read_checkpoint};
use bert_model::{
    BertForMaskedLM, BertForMultipleChoice, BertForPreTraining, BertForQuestionAnswering,
    BertForSequenceClassification, BertForTokenClassification, BertInput, BertModel, LoadOptions,
    PretrainedBert, load_pretrained, save_pretrained,
};
use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};

type B = Flex;

const TOL: f32 = 1e-4;

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-bert")
        .join(arch)
}

struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn open(arch: &str) -> Self {
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

    fn input(&self) -> BertInput<B> {
        BertInput::new(self.int("input_ids"))
            .with_token_type_ids(self.int("token_type_ids"))
            .with_attention_mask(self.int("attention_mask"))
    }

    fn check<const D: usize>(&self, name: &str, actual: Tensor<B, D>) {
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

fn load<M: PretrainedBert<B>>(arch: &str) -> M {
    let (model, _, report) =
        load_pretrained::<B, M>(fixture(arch), LoadOptions::strict(), &Default::default())
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
    assert!(
        report.missing.is_empty() && report.unexpected.is_empty(),
        "{report:?}"
    );
    model
}

fn check_hidden_states(r: &Reference, states: Option<Vec<Tensor<B, 3>>>) {
    let states = states.expect("hidden states requested");
    r.check("hidden_states", Tensor::stack::<4>(states, 0));
}

#[test]
fn bert_model_matches_transformers() {
    let r = Reference::open("BertModel");
    let model: BertModel<B> = load("BertModel");
    let out = model.forward(r.input(), true);
    r.check("last_hidden_state", out.last_hidden_state);
    r.check("pooler_output", out.pooler_output.expect("pooler"));
    check_hidden_states(&r, out.hidden_states);
}

#[test]
fn pretraining_heads_match_transformers() {
    let r = Reference::open("BertForPreTraining");
    let model: BertForPreTraining<B> = load("BertForPreTraining");
    let out = model.forward(r.input(), true);
    r.check("mlm_logits", out.prediction_logits);
    r.check("seq_relationship_logits", out.seq_relationship_logits);
    check_hidden_states(&r, out.bert.hidden_states);
}

#[test]
fn masked_lm_with_gelu_tanh_matches_transformers() {
    let r = Reference::open("BertForMaskedLM");
    let model: BertForMaskedLM<B> = load("BertForMaskedLM");
    let (logits, out) = model.forward(r.input(), true);
    r.check("mlm_logits", logits);
    check_hidden_states(&r, out.hidden_states);
}

#[test]
fn sequence_classification_from_pickle_matches_transformers() {
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

#[test]
fn token_classification_with_relu_matches_transformers() {
    let r = Reference::open("BertForTokenClassification");
    let model: BertForTokenClassification<B> = load("BertForTokenClassification");
    let (logits, out) = model.forward(r.input(), true);
    r.check("tokcls_logits", logits);
    check_hidden_states(&r, out.hidden_states);
}

#[test]
fn question_answering_matches_transformers() {
    let r = Reference::open("BertForQuestionAnswering");
    let model: BertForQuestionAnswering<B> = load("BertForQuestionAnswering");
    let (start, end, _) = model.forward(r.input(), false);
    r.check("qa_start_logits", start);
    r.check("qa_end_logits", end);
}

#[test]
fn multiple_choice_matches_transformers() {
    let r = Reference::open("BertForMultipleChoice");
    let model: BertForMultipleChoice<B> = load("BertForMultipleChoice");
    let logits = model.forward(r.input(), 3);
    r.check("mc_logits", logits);
}

#[test]
fn export_round_trip_is_lossless() {
    let dir = tempfile::tempdir().expect("tempdir");
    for arch in [
        "BertModel",
        "BertForPreTraining",
        "BertForSequenceClassification",
        "BertForQuestionAnswering",
    ] {
        let out = dir.path().join(arch);
        let original = read_checkpoint(
            &bert_model::checkpoint::weights_file(&fixture(arch)).expect("weights"),
        )
        .expect("read");
        macro_rules! round_trip {
            ($ty:ty) => {{
                let (model, config, _) = load_pretrained::<B, $ty>(
                    fixture(arch),
                    LoadOptions::strict(),
                    &Default::default(),
                )
                .expect("load");
                save_pretrained::<B, $ty>(&model, &config, &out).expect("save");
                // Reload strictly and compare every exported tensor with the HF original.
                let (again, _, _) =
                    load_pretrained::<B, $ty>(&out, LoadOptions::strict(), &Default::default())
                        .expect("reload");
                hf_state_dict::<B, $ty>(&again).expect("state dict")
            }};
        }
        let exported = match arch {
            "BertModel" => round_trip!(BertModel<B>),
            "BertForPreTraining" => round_trip!(BertForPreTraining<B>),
            "BertForSequenceClassification" => round_trip!(BertForSequenceClassification<B>),
            _ => round_trip!(BertForQuestionAnswering<B>),
        };
        let written = read_checkpoint(&out.join("model.safetensors")).expect("exported file");
        assert!(
            !written.contains_key("cls.predictions.decoder.weight"),
            "tied decoder is not stored"
        );
        for (key, data) in &exported {
            let source = original
                .get(key)
                .unwrap_or_else(|| panic!("{arch}: exported {key} is not an HF key"));
            let source = source.to_data().expect("data");
            assert_eq!(&source, data, "{arch}: {key} differs after the round trip");
            assert!(written.contains_key(key));
        }
        let skipped: Vec<_> = original
            .keys()
            .filter(|k| !exported.iter().any(|(e, _)| e == *k))
            .collect();
        assert!(
            skipped
                .iter()
                .all(|k| k.ends_with("position_ids") || k.contains("decoder")),
            "{arch}: not exported: {skipped:?}"
        );
    }
}

#[test]
fn strict_load_names_the_missing_tensor() {
    // The bare encoder checkpoint has no classifier: strict fails and names it, partial works.
    let device = Default::default();
    let err = load_pretrained::<B, BertForSequenceClassification<B>>(
        fixture("BertModel"),
        LoadOptions::strict(),
        &device,
    )
    .expect_err("classifier is missing");
    assert!(err.to_string().contains("classifier.weight"), "{err}");
    let (_, _, report) = load_pretrained::<B, BertForSequenceClassification<B>>(
        fixture("BertModel"),
        LoadOptions::partial(),
        &device,
    )
    .expect("partial load");
    assert_eq!(report.missing, vec!["classifier.bias", "classifier.weight"]);
}

#[test]
fn unexpected_and_misshaped_tensors_are_errors() {
    let device = Default::default();
    // A QA checkpoint into a token classifier: qa_outputs is unexpected, classifier missing.
    let err = load_pretrained::<B, BertForTokenClassification<B>>(
        fixture("BertForQuestionAnswering"),
        LoadOptions::strict(),
        &device,
    )
    .expect_err("heads differ");
    let msg = err.to_string();
    assert!(
        msg.contains("qa_outputs.weight") && msg.contains("classifier.weight"),
        "{msg}"
    );

    // A config that disagrees with the weights: the tensor and both shapes are named.
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(fixture("BertModel").join(f), dir.path().join(f)).expect("copy");
    }
    let config = std::fs::read_to_string(dir.path().join("config.json")).expect("config");
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"intermediate_size\": 37", "\"intermediate_size\": 40"),
    )
    .expect("write");
    let err = load_pretrained::<B, BertModel<B>>(dir.path(), LoadOptions::strict(), &device)
        .expect_err("shape mismatch");
    let msg = err.to_string();
    assert!(
        msg.contains("encoder.layer.0.intermediate.dense.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("[37, 32]") && msg.contains("[40, 32]"),
        "{msg}"
    );
}

#[test]
fn missing_directory_and_files_are_clear_errors() {
    let device = Default::default();
    let err =
        load_pretrained::<B, BertModel<B>>("/nonexistent/model", LoadOptions::strict(), &device)
            .expect_err("no dir");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load_pretrained::<B, BertModel<B>>(dir.path(), LoadOptions::strict(), &device)
        .expect_err("no weights");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .expect("write");
    std::fs::copy(
        fixture("BertModel").join("config.json"),
        dir.path().join("config.json"),
    )
    .expect("copy");
    let err = load_pretrained::<B, BertModel<B>>(dir.path(), LoadOptions::strict(), &device)
        .expect_err("corrupt");
    assert!(err.to_string().contains("safetensors"), "{err}");
}
