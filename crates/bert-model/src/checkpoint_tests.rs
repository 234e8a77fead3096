use super::*;

#[test]
fn rename_table_round_trips() {
    for (hf, ours) in [
        (
            "encoder.layer.0.attention.self.query.weight",
            "encoder.layer.0.attention.self_attn.query.weight",
        ),
        ("embeddings.LayerNorm.weight", "embeddings.layer_norm.gamma"),
        (
            "bert.encoder.layer.11.output.LayerNorm.bias",
            "bert.encoder.layer.11.output.layer_norm.beta",
        ),
        ("cls.predictions.bias", "cls.predictions.bias"),
        ("classifier.weight", "classifier.weight"),
    ] {
        assert_eq!(hf_to_ours(hf), ours);
        assert_eq!(ours_to_hf(ours), hf);
    }
    assert_eq!(
        hf_to_ours("bert.embeddings.LayerNorm.gamma"),
        "bert.embeddings.layer_norm.gamma"
    );
    assert_eq!(
        hf_to_ours("bert.embeddings.LayerNorm.beta"),
        "bert.embeddings.layer_norm.beta"
    );
}

#[test]
fn keys_follow_the_target_prefix() {
    type B = burn::backend::Flex;
    assert_eq!(
        key_for::<B, BertModel<B>>("bert.encoder.layer.0.output.dense.weight", true).as_deref(),
        Some("encoder.layer.0.output.dense.weight")
    );
    assert_eq!(
        key_for::<B, BertModel<B>>("cls.predictions.bias", true),
        None
    );
    assert_eq!(
        key_for::<B, BertForMaskedLM<B>>("embeddings.word_embeddings.weight", false).as_deref(),
        Some("bert.embeddings.word_embeddings.weight")
    );
    assert_eq!(
        key_for::<B, BertModel<B>>("embeddings.position_ids", false),
        None
    );
    assert_eq!(
        key_for::<B, BertForMaskedLM<B>>("cls.seq_relationship.weight", true),
        None
    );
}
