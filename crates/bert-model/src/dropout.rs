//! Inverted dropout, as `torch.nn.Dropout`: in training each element is kept with probability
//! `1 - prob` and scaled by `1 / (1 - prob)`, else zeroed; in inference (a backend without
//! autodiff) it is the identity.
//!
//! Same contract as `burn::nn::Dropout`, two differences that make it cheaper:
//! - the scale is folded into the mask (`x * mask`, one tracked multiply instead of two);
//! - on Burn's flex CPU backend (crate feature `flex`) the mask is drawn in parallel from a
//!   counter-based generator keyed by one seed taken from the backend's RNG, instead of element
//!   by element from the backend's RNG on one thread (see [`crate::ops`]). The seed comes from
//!   the backend, so `Backend::seed` still makes a run reproducible, and the mask does not
//!   depend on the number of threads;
//! - a thread can draw its masks from a stream of its own ([`set_thread_seed`]): Burn's RNG is
//!   one per process, so data-parallel replicas on several threads would otherwise race for
//!   it. The masks of such a thread are computed on the host from the stream alone and
//!   uploaded, on any backend and device.
//!
//! ```
//! use bert_model::dropout::DropoutConfig;
//! use burn::backend::{Autodiff, Flex};
//! use burn::tensor::Tensor;
//!
//! let dropout = DropoutConfig::new(0.1).init();
//! let device = Default::default();
//! // Inference: the identity.
//! let x = Tensor::<Flex, 2>::ones([4, 8], &device);
//! assert_eq!(dropout.forward(x.clone()).to_data(), x.to_data());
//! // Training: each element is 0 or 1 / 0.9.
//! let y = dropout.forward(Tensor::<Autodiff<Flex>, 2>::ones([4, 8], &device));
//! let kept = y.to_data().to_vec::<f32>().unwrap();
//! assert!(kept.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
//! ```

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor, TensorData};

use crate::ops;

thread_local! {
    static THREAD_STREAM: std::cell::Cell<Option<(u64, u64)>> = const { std::cell::Cell::new(None) };
}

/// Makes this thread's dropout masks come from a counter-based stream keyed by `seed` (the
/// `n`-th mask of the thread from `(seed, n)`), independent of the backend's RNG and of other
/// threads; `None` returns to the backend's RNG. A data-parallel trainer sets it per replica
/// and step.
pub fn set_thread_seed(seed: Option<u64>) {
    THREAD_STREAM.with(|s| s.set(seed.map(|seed| (seed, 0))));
}

/// The seed of this thread's next mask (the `n`-th draw of SplitMix64 keyed by the stream's
/// seed), when [`set_thread_seed`] gave it a stream.
pub(crate) fn next_thread_seed() -> Option<u64> {
    THREAD_STREAM.with(|s| {
        let (seed, n) = s.get()?;
        s.set(Some((seed, n + 1)));
        Some(splitmix64(seed, n))
    })
}

/// Output `index` of SplitMix64 (Steele, Lea and Flood 2014) started at `seed`: a counter-based
/// generator, so any element of a stream can be computed on its own, in any order.
#[inline(always)]
pub(crate) fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The mask [`mask_data`] gives for `seed`, shaped as `like` on its device (any device and
/// backend: it is computed on the host and uploaded), in `like`'s dtype, not tracked.
pub(crate) fn mask_from_seed<B: Backend, const D: usize>(
    like: &Tensor<B, D>,
    keep: f64,
    seed: u64,
) -> Tensor<B, D> {
    let data = mask_data(like.shape(), keep, seed);
    Tensor::<B, D>::from_data(data, &like.device()).cast(like.dtype())
}

/// A dropout mask: element `i` is `1 / keep` when the `i`-th 32-bit draw of
/// [`splitmix64`]`(seed, ·)` (two per 64-bit output, low half first) is below
/// `keep · 2³²`, else 0. Filled in parallel chunks; the result does not depend on them.
pub(crate) fn mask_data(shape: Shape, keep: f64, seed: u64) -> TensorData {
    /// Elements per rayon task (even, so a task starts on a whole 64-bit draw).
    const CHUNK: usize = 1 << 15;
    let threshold = (keep * 4_294_967_296.0).round().clamp(0.0, 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    let pick = |bits: u64| if bits < threshold { scale } else { 0.0 };
    let mut mask = vec![0.0f32; shape.num_elements()];
    let fill = |(task, chunk): (usize, &mut [f32])| {
        let first = (task * CHUNK / 2) as u64;
        for (j, pair) in chunk.chunks_mut(2).enumerate() {
            let draw = splitmix64(seed, first + j as u64);
            pair[0] = pick(draw & 0xffff_ffff);
            if let Some(second) = pair.get_mut(1) {
                *second = pick(draw >> 32);
            }
        }
    };
    // In parallel where the crate has rayon (the flex feature), else in order: same values.
    #[cfg(feature = "flex")]
    {
        use rayon::prelude::*;
        mask.par_chunks_mut(CHUNK).enumerate().for_each(fill);
    }
    #[cfg(not(feature = "flex"))]
    mask.chunks_mut(CHUNK).enumerate().for_each(fill);
    TensorData::new(mask, shape)
}

/// Configuration of a [`Dropout`].
#[derive(Config, Debug)]
pub struct DropoutConfig {
    /// Probability of zeroing an element, in `[0, 1]`.
    pub prob: f64,
}

impl DropoutConfig {
    /// The dropout layer. Panics when `prob` is outside `[0, 1]` (a programming error: the
    /// probabilities of a [`crate::BertConfig`] are validated when it is read).
    pub fn init(&self) -> Dropout {
        assert!(
            (0.0..=1.0).contains(&self.prob),
            "dropout probability must be in [0, 1], got {}",
            self.prob
        );
        Dropout { prob: self.prob }
    }
}

/// Inverted dropout (see the module docs). No parameters, so nothing in checkpoints.
#[derive(Module, Clone, Debug)]
pub struct Dropout {
    /// Probability of zeroing an element.
    pub prob: f64,
}

impl Dropout {
    /// Any shape in, the same shape out: `x * mask / (1 - prob)` under autodiff, `x` otherwise.
    pub fn forward<B: Backend, const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        if !B::ad_enabled(&input.device()) || self.prob == 0.0 {
            return input;
        }
        if self.prob == 1.0 {
            return input.zeros_like();
        }
        let mask = ops::dropout_mask(&input, 1.0 - self.prob);
        input * mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    type Ad = Autodiff<Flex>;

    fn values(t: Tensor<Ad, 2>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32 data")
    }

    #[test]
    fn keeps_the_configured_fraction_scaled_and_passes_the_mask_to_the_gradient() {
        let device = Default::default();
        Ad::seed(&device, 3);
        let xs: Vec<f32> = (0..64 * 1024).map(|i| 1.0 + (i % 7) as f32).collect();
        let x = Tensor::<Ad, 2>::from_data(TensorData::new(xs.clone(), [64, 1024]), &device)
            .require_grad();
        let y = DropoutConfig::new(0.1).init().forward(x.clone());
        let grads = y.clone().sum().backward();
        let grad = x.grad(&grads).expect("gradient").into_data();
        let grad = grad.to_vec::<f32>().expect("f32 data");
        let ys = values(y);
        let scale = 1.0 / 0.9;
        let mut kept = 0;
        for ((x, y), g) in xs.iter().zip(&ys).zip(&grad) {
            if *y == 0.0 {
                assert_eq!(*g, 0.0);
            } else {
                kept += 1;
                assert!((y - x * scale).abs() < 1e-5, "{y} vs {x} / 0.9");
                assert!((g - scale).abs() < 1e-6, "gradient {g}");
            }
        }
        // 65,536 Bernoulli(0.9) draws: the standard deviation of the kept fraction is 0.0012.
        let fraction = kept as f64 / xs.len() as f64;
        assert!((fraction - 0.9).abs() < 0.006, "kept {fraction}");
    }

    #[test]
    fn is_the_identity_in_inference_and_at_zero() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::ones([3, 5], &device);
        let y = DropoutConfig::new(0.5).init().forward(x.clone());
        assert_eq!(y.into_data(), x.into_data());
        let x = Tensor::<Ad, 2>::ones([3, 5], &device);
        let y = DropoutConfig::new(0.0).init().forward(x.clone());
        assert_eq!(values(y), values(x.clone()));
        let y = DropoutConfig::new(1.0).init().forward(x);
        assert!(values(y).iter().all(|&v| v == 0.0));
    }
    /// A thread stream decides the masks alone: the same seed gives the same masks on any
    /// thread, one mask after another differs, another seed differs.
    #[test]
    fn a_thread_stream_decides_the_masks() {
        fn masks(seed: u64) -> (Vec<f32>, Vec<f32>) {
            let dropout = DropoutConfig::new(0.5).init();
            let x = || Tensor::<Ad, 2>::ones([16, 40], &Default::default());
            set_thread_seed(Some(seed));
            let first = values(dropout.forward(x()));
            let second = values(dropout.forward(x()));
            set_thread_seed(None);
            (first, second)
        }
        let (a, b) = masks(3);
        assert_eq!(masks(3), (a.clone(), b.clone()));
        assert_eq!(
            std::thread::spawn(|| masks(3)).join().expect("thread"),
            (a.clone(), b.clone())
        );
        assert_ne!(a, b, "consecutive masks differ");
        assert_ne!(masks(4).0, a, "another seed, another mask");
        let kept = a.iter().filter(|&&v| v > 0.0).count();
        assert!((200..440).contains(&kept), "about half kept: {kept}");
    }

    #[test]
    fn dropout_mask_is_the_serial_stream() {
        let (len, keep, seed) = (3 * (1 << 15) + 4_321, 0.75, 0xdead_beef);
        let mask = mask_data(Shape::new([len]), keep, seed)
            .to_vec::<f32>()
            .expect("f32 data");
        let expected: Vec<f32> = (0..len)
            .map(|i| {
                let draw = splitmix64(seed, (i / 2) as u64);
                let bits = if i % 2 == 0 {
                    draw & 0xffff_ffff
                } else {
                    draw >> 32
                };
                if (bits as f64) < keep * 4_294_967_296.0 {
                    1.0 / 0.75
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(mask, expected);
        let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / len as f64;
        assert!((kept - keep).abs() < 0.01, "kept {kept}");
    }
}
