use super::*;
use burn::backend::Flex;
use burn::tensor::TensorData;

type B = Flex;

fn small() -> BertConfig {
    let mut c = BertConfig::tiny();
    c.vocab_size = 50;
    c.hidden_size = 16;
    c.intermediate_size = 32;
    c.max_position_embeddings = 20;
    c
}

#[test]
fn shapes_through_the_model() {
    let device = Default::default();
    let config = small();
    let model = BertModel::<B>::new(&config, true, &device);
    let ids = Tensor::<B, 2, Int>::from_ints([[2, 5, 7, 3, 0], [2, 9, 3, 0, 0]], &device);
    let mask = Tensor::<B, 2, Int>::from_ints([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], &device);
    let out = model.forward(BertInput::new(ids).with_attention_mask(mask), true);
    assert_eq!(out.last_hidden_state.dims(), [2, 5, 16]);
    assert_eq!(out.pooler_output.expect("pooler").dims(), [2, 16]);
    assert_eq!(out.hidden_states.expect("states").len(), 3);
}

#[test]
fn padding_does_not_change_real_tokens() {
    let device = Default::default();
    let model = BertModel::<B>::new(&small(), false, &device);
    let short = Tensor::<B, 2, Int>::from_ints([[2, 5, 7, 3]], &device);
    let padded = Tensor::<B, 2, Int>::from_ints([[2, 5, 7, 3, 0, 0]], &device);
    let mask = Tensor::<B, 2, Int>::from_ints([[1, 1, 1, 1, 0, 0]], &device);
    let a = model
        .forward(BertInput::new(short), false)
        .last_hidden_state;
    let b = model
        .forward(BertInput::new(padded).with_attention_mask(mask), false)
        .last_hidden_state
        .slice([0..1, 0..4, 0..16]);
    a.into_data()
        .assert_approx_eq::<f32>(&b.into_data(), burn::tensor::Tolerance::absolute(1e-5));
}

#[test]
fn init_follows_hf() {
    let device = Default::default();
    let config = small();
    let emb = BertEmbeddings::<B>::new(&config, &device);
    let pad_row = emb
        .word_embeddings
        .weight
        .val()
        .slice([0..1, 0..16])
        .abs()
        .sum()
        .into_scalar();
    assert_eq!(pad_row, 0.0, "padding row is zero");
    let w: Vec<f32> = emb
        .word_embeddings
        .weight
        .val()
        .into_data()
        .to_vec()
        .expect("f32");
    let n = w.len() as f32;
    let mean = w.iter().sum::<f32>() / n;
    let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
    assert!((std - 0.02).abs() < 0.003, "std {std}");
    let layer = BertOutput::<B>::new(&config, &device);
    let bias = layer
        .dense
        .bias
        .expect("bias")
        .val()
        .abs()
        .sum()
        .into_scalar();
    assert_eq!(bias, 0.0);
    let gamma = layer.layer_norm.gamma.val().into_data();
    gamma.assert_eq(&TensorData::from([1.0f32; 16]), false);
}

/// Every parameter of a new model gets a gradient from the first backward pass, also when
/// the forward ran on a clone (as the mixed-precision copy and data-parallel replicas do).
#[test]
fn a_new_model_trains_every_parameter_from_the_first_step() {
    use burn::backend::Autodiff;
    use burn::optim::GradientsParams;
    type A = Autodiff<B>;
    let device = Default::default();
    let model = BertModel::<A>::new(&small(), true, &device);
    let ids = Tensor::<A, 2, Int>::from_ints([[2, 5, 7, 3]], &device);
    let out = model.clone().forward(BertInput::new(ids), false);
    let loss = out.last_hidden_state.sum() + out.pooler_output.expect("pooler").sum();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    assert_eq!(grads.len(), burn::module::list_param_ids(&model).len());
}

#[test]
fn masked_mean_ignores_padding() {
    let device = Default::default();
    let h = Tensor::<B, 3>::from_floats([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], &device);
    let m = Tensor::<B, 2, Int>::from_ints([[1, 1, 0]], &device);
    masked_mean(h, m)
        .into_data()
        .assert_eq(&TensorData::from([[2.0f32, 3.0]]), false);
}
