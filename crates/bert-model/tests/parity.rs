//! Every head against Hugging Face transformers on a small random BERT (every parameter random,
//! LayerNorm and biases included), from `tests/fixtures/tiny-bert` written by
//! `scripts/make_fixtures.py`, through the fused CPU kernels (`parity_generic.rs` runs the same
//! checks on the generic ops). Also: export round trips and strict-load errors.

mod heads;
use heads::{B, fixture};

use bert_model::checkpoint::{hf_state_dict, read_checkpoint};
use bert_model::{
    BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertModel, LoadOptions, load_pretrained, save_pretrained,
};

#[test]
fn bert_model_matches_transformers() {
    heads::bert_model_matches_transformers();
}

#[test]
fn pretraining_heads_match_transformers() {
    heads::pretraining_heads_match_transformers();
}

#[test]
fn masked_lm_with_gelu_tanh_matches_transformers() {
    heads::masked_lm_with_gelu_tanh_matches_transformers();
}

#[test]
fn sequence_classification_from_pickle_matches_transformers() {
    heads::sequence_classification_from_pickle_matches_transformers();
}

#[test]
fn token_classification_with_relu_matches_transformers() {
    heads::token_classification_with_relu_matches_transformers();
}

#[test]
fn question_answering_matches_transformers() {
    heads::question_answering_matches_transformers();
}

#[test]
fn multiple_choice_matches_transformers() {
    heads::multiple_choice_matches_transformers();
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
