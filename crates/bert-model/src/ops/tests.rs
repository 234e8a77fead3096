//! The ops against their formulas, and the fused paths against the generic ones through the
//! whole model.

use super::*;
use burn::backend::Flex;

type B = Flex;

#[test]
fn activations_match_their_formulas() {
    let device = Default::default();
    let x = Tensor::<B, 1>::from_floats([-1.0, 0.5, 2.0], &device);
    let silu: Vec<f32> = activation(HiddenAct::Silu, x.clone())
        .into_data()
        .to_vec()
        .expect("f32");
    let expect = [-1.0f32, 0.5, 2.0].map(|v| v / (1.0 + (-v).exp()));
    for (a, b) in silu.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6);
    }
    let relu: Vec<f32> = activation(HiddenAct::Relu, x)
        .into_data()
        .to_vec()
        .expect("f32");
    assert_eq!(relu, vec![0.0, 0.5, 2.0]);
}

/// The fused inference kernels (on `Flex`) against the same model on `Autodiff<Flex>`, whose
/// tensors the inference kernels never take.
#[cfg(feature = "flex")]
mod paths {
    use crate::{BertConfig, BertInput, BertModel, LoadOptions, load_pretrained};
    use burn::backend::{Autodiff, Flex};
    use burn::module::{AutodiffModule, Param};
    use burn::nn::Linear;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Distribution, Int, Tensor, Tolerance};

    type G = Autodiff<Flex>;

    /// Runs `generic` on `Autodiff<Flex>` (which the inference kernels never take: the generic
    /// ops, and the fused training ops) and its `valid()` copy on `Flex` (the fused inference
    /// path) over a padded batch with `seq` positions, and compares every layer's output.
    fn compare(mut generic: BertModel<G>, vocab: usize, seq: usize) {
        // Dropout is live under autodiff: off, to compare the inference function.
        generic.embeddings.dropout.prob = 0.0;
        for layer in &mut generic.encoder.layer {
            layer.attention.self_attn.dropout.prob = 0.0;
            layer.attention.output.dropout.prob = 0.0;
            layer.output.dropout.prob = 0.0;
        }
        let fused: BertModel<Flex> = generic.valid();
        // Three sequences: all of `seq`, half of it, three tokens.
        let lens = [seq, seq / 2, 3];
        let ids: Vec<i32> = lens
            .iter()
            .flat_map(|&n| {
                (0..seq).map(move |j| {
                    if j < n {
                        (2 + 7 * j % (vocab - 2)) as i32
                    } else {
                        0
                    }
                })
            })
            .collect();
        let mask: Vec<i32> = lens
            .iter()
            .flat_map(|&n| (0..seq).map(move |j| i32::from(j < n)))
            .collect();
        fn input<B: Backend>(ids: &[i32], mask: &[i32], seq: usize) -> BertInput<B> {
            let device = Default::default();
            let t = |v: &[i32]| {
                Tensor::<B, 1, Int>::from_ints(v, &device).reshape([v.len() / seq, seq])
            };
            BertInput::new(t(ids)).with_attention_mask(t(mask))
        }
        let a = generic.forward(input(&ids, &mask, seq), true).hidden_states;
        let b = fused.forward(input(&ids, &mask, seq), true).hidden_states;
        let (a, b) = (a.expect("states"), b.expect("states"));
        assert_eq!(a.len(), generic.encoder.layer.len() + 1);
        for (a, b) in a.into_iter().zip(b) {
            b.into_data()
                .assert_approx_eq::<f32>(&a.inner().into_data(), Tolerance::absolute(1e-5));
        }
    }

    /// The random tiny BERT of the test fixtures (4 heads of 8, non-zero biases, GELU):
    /// the paths agree to f32 noise (max |diff| ≈ 2e-6; the two backends' own LayerNorms
    /// already differ by 5e-7 on the embeddings).
    #[test]
    fn fused_and_generic_paths_agree_on_the_fixture() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tiny-bert/BertModel"
        );
        let device = Default::default();
        assert!(super::fused_inference(&Tensor::<Flex, 1>::zeros(
            [1],
            &device
        )));
        assert!(!super::fused_inference(&Tensor::<G, 1>::zeros(
            [1],
            &device
        )));
        let (model, config, _) =
            load_pretrained::<G, BertModel<G>>(dir, LoadOptions::strict(), &device)
                .expect("fixture");
        compare(model, config.vocab_size, 7);
    }

    fn random_bias(linear: &mut Linear<G>) {
        let n = linear.weight.dims()[1];
        let bias = Tensor::random([n], Distribution::Normal(0.0, 0.5), &Default::default());
        linear.bias = Some(Param::from_tensor(bias));
    }

    /// Head sizes with their own register-blocked loops (32, 64) and sequences longer than
    /// the 16-key block of the score loop (block + tail).
    #[test]
    fn fused_and_generic_paths_agree_for_head_sizes_32_and_64() {
        for (hidden, heads) in [(64, 2), (128, 2)] {
            let mut config = BertConfig::tiny();
            config.hidden_size = hidden;
            config.num_attention_heads = heads;
            config.intermediate_size = 2 * hidden;
            config.vocab_size = 40;
            config.max_position_embeddings = 40;
            config.initializer_range = 0.2;
            let mut model = BertModel::<G>::new(&config, false, &Default::default());
            for layer in &mut model.encoder.layer {
                let attention = &mut layer.attention.self_attn;
                random_bias(&mut attention.query);
                random_bias(&mut attention.key);
                random_bias(&mut attention.value);
                random_bias(&mut layer.attention.output.dense);
                random_bias(&mut layer.intermediate.dense);
                random_bias(&mut layer.output.dense);
            }
            compare(model, config.vocab_size, 37);
        }
    }
}
