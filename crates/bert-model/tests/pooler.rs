//! A `BertModel` checkpoint saved without its pooler (transformers' `add_pooling_layer=False`,
//! common in sentence-transformers exports) loads strictly, as transformers loads it: the model
//! has no pooler and the same encoder outputs.

use std::path::{Path, PathBuf};

use bert_model::{BertInput, BertModel, LoadOptions, load_pretrained};
use burn::backend::Flex;
use burn::tensor::{Int, Tensor};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-bert/BertModel")
}

/// A copy of the fixture whose weights lack every `pooler.` tensor.
fn without_pooler(dir: &Path) {
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).expect("config");
    let bytes = std::fs::read(fixture().join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("pooler."))
        .collect();
    assert!(kept.len() < st.len(), "the fixture has a pooler to drop");
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(kept, None).expect("serialize"),
    )
    .expect("write");
}

#[test]
fn a_bert_model_without_pooler_loads_strictly() {
    let tmp = tempfile::tempdir().expect("tmp");
    without_pooler(tmp.path());
    let device = Default::default();
    let (bare, _, report) =
        load_pretrained::<Flex, BertModel<Flex>>(tmp.path(), LoadOptions::strict(), &device)
            .expect("loads without a pooler");
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    assert!(bare.pooler.is_none());
    let (full, _, _) =
        load_pretrained::<Flex, BertModel<Flex>>(fixture(), LoadOptions::strict(), &device)
            .expect("the full fixture");
    assert!(full.pooler.is_some(), "a checkpoint with a pooler keeps it");
    let ids = || Tensor::<Flex, 2, Int>::from_ints([[2, 7, 9, 11, 3]], &device);
    let a = bare.forward(BertInput::new(ids()), false);
    let b = full.forward(BertInput::new(ids()), false);
    assert!(a.pooler_output.is_none() && b.pooler_output.is_some());
    let diff = (a.last_hidden_state - b.last_hidden_state)
        .abs()
        .max()
        .into_scalar();
    assert_eq!(diff, 0.0, "the same encoder");
}
