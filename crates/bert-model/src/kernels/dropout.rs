//! Dropout masks drawn on the host in parallel, for tensors on the flex device (autodiff or
//! not): a counter-based generator keyed by one seed from the backend's RNG, so
//! `Backend::seed` still makes a run reproducible and the mask does not depend on the number
//! of threads.

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};

use crate::dropout::mask_data;

/// `1 / keep` with probability `keep`, else 0, shaped as `like` on its device, not tracked:
/// [`mask_data`] keyed by a seed drawn from the backend's RNG.
pub(crate) fn dropout_mask<B: Backend, const D: usize>(
    like: &Tensor<B, D>,
    keep: f64,
) -> Tensor<B, D> {
    let device = like.device();
    let seed = draw_seed::<B>(&device);
    let data = mask_data(like.shape(), keep, seed);
    Tensor::from_data(data, &device)
}

/// 64 random bits from the backend's RNG (four 16-bit draws, whatever the int type's width).
fn draw_seed<B: Backend>(device: &B::Device) -> u64 {
    let draws = Tensor::<B, 1, Int>::random([4], Distribution::Uniform(0.0, 65536.0), device);
    draws
        .into_data()
        .iter::<i64>()
        .fold(0u64, |seed, d| (seed << 16) | (d as u64 & 0xffff))
}
