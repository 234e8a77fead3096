//! The backend's seed decides dropout masks (`Backend::seed` makes a training run
//! reproducible). Alone in its own test binary: the CPU backend's RNG is one per process, and
//! tests running beside it in the same process would draw from it between the seed and the
//! mask.

use bert_model::dropout::DropoutConfig;
use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

type Ad = Autodiff<Flex>;

fn mask(dropout: &bert_model::dropout::Dropout) -> Vec<f32> {
    let device = Default::default();
    dropout
        .forward(Tensor::<Ad, 2>::ones([16, 257], &device))
        .into_data()
        .to_vec::<f32>()
        .expect("f32 data")
}

#[test]
fn the_backend_seed_decides_the_mask() {
    let device = Default::default();
    let dropout = DropoutConfig::new(0.5).init();
    let seeded = |seed| {
        Ad::seed(&device, seed);
        mask(&dropout)
    };
    let (a, b, c) = (seeded(1), seeded(1), seeded(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Two calls after one seed draw different masks, the first one as above.
    Ad::seed(&device, 1);
    let (first, second) = (mask(&dropout), mask(&dropout));
    assert_eq!(first, a);
    assert_ne!(first, second);
}
