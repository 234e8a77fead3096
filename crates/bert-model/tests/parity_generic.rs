//! The generic ops (Burn's tensor ops, the path a GPU takes: `bert_model::ops` with the fused
//! CPU kernels switched off) against transformers, for every head: the path CUDA and wgpu run is
//! checked on every machine, not only where a GPU or Vulkan exists. Its own test binary: the
//! switch is per process.

mod heads;

/// Every test of this binary runs the generic ops.
fn generic() {
    bert_model::ops::set_fused_kernels(false);
    assert!(!bert_model::ops::fused_kernels());
}

#[test]
fn generic_bert_model_matches_transformers() {
    generic();
    heads::bert_model_matches_transformers();
}

#[test]
fn generic_pretraining_heads_match_transformers() {
    generic();
    heads::pretraining_heads_match_transformers();
}

#[test]
fn generic_masked_lm_with_gelu_tanh_matches_transformers() {
    generic();
    heads::masked_lm_with_gelu_tanh_matches_transformers();
}

#[test]
fn generic_sequence_classification_from_pickle_matches_transformers() {
    generic();
    heads::sequence_classification_from_pickle_matches_transformers();
}

#[test]
fn generic_token_classification_with_relu_matches_transformers() {
    generic();
    heads::token_classification_with_relu_matches_transformers();
}

#[test]
fn generic_question_answering_matches_transformers() {
    generic();
    heads::question_answering_matches_transformers();
}

#[test]
fn generic_multiple_choice_matches_transformers() {
    generic();
    heads::multiple_choice_matches_transformers();
}
