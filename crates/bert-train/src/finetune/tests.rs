use burn::backend::Flex;

use super::*;

/// Ids outside the model's tables are errors naming the table, not out-of-bounds reads.
#[test]
fn inputs_are_checked_against_the_model_tables() {
    let mut config = BertConfig::tiny();
    config.vocab_size = 30;
    config.type_vocab_size = 1;
    config.max_position_embeddings = 8;
    let device = Default::default();
    let model = BertModel::<Flex>::new(&config, false, &device);
    let check = |ids: &[u32], types: &[u32]| {
        input_of(&model, [(ids, types)], 0, &device)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(check(&[1, 2, 29], &[0, 0, 0]).is_ok());
    let err = check(&[1, 30], &[0, 0]).expect_err("id 30");
    assert!(err.contains("token id 30") && err.contains("30"), "{err}");
    let err = check(&[1, 2], &[0, 1]).expect_err("a pair on a one-segment model");
    assert!(err.contains("type_vocab_size 1"), "{err}");
    let err = check(&[1; 9], &[0; 9]).expect_err("longer than the position table");
    assert!(err.contains("max_position_embeddings 8"), "{err}");
}
