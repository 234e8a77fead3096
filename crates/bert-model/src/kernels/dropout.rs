//! Dropout masks drawn on the host in parallel, for tensors on the flex device (autodiff or
//! not): a counter-based generator keyed by one seed from the backend's RNG, so
//! `Backend::seed` still makes a run reproducible and the mask does not depend on the number
//! of threads.

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::simd::splitmix64;

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

/// The mask [`mask_data`] gives for `seed`, shaped as `like` on its device (any device: it is
/// computed on the host), in `like`'s dtype, not tracked.
pub(crate) fn mask_from_seed<B: Backend, const D: usize>(
    like: &Tensor<B, D>,
    keep: f64,
    seed: u64,
) -> Tensor<B, D> {
    let data = mask_data(like.shape(), keep, seed);
    Tensor::<B, D>::from_data(data, &like.device()).cast(like.dtype())
}

/// 64 random bits from the backend's RNG (four 16-bit draws, whatever the int type's width).
fn draw_seed<B: Backend>(device: &B::Device) -> u64 {
    let draws = Tensor::<B, 1, Int>::random([4], Distribution::Uniform(0.0, 65536.0), device);
    draws
        .into_data()
        .iter::<i64>()
        .fold(0u64, |seed, d| (seed << 16) | (d as u64 & 0xffff))
}

/// A dropout mask: element `i` is `1 / keep` when the `i`-th 32-bit draw of
/// [`splitmix64`]`(seed, ·)` (two per 64-bit output, low half first) is below
/// `keep · 2³²`, else 0. Filled in parallel chunks; the result does not depend on them.
fn mask_data(shape: Shape, keep: f64, seed: u64) -> TensorData {
    /// Elements per rayon task (even, so a task starts on a whole 64-bit draw).
    const CHUNK: usize = 1 << 15;
    let threshold = (keep * 4_294_967_296.0).round().clamp(0.0, 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    let pick = |bits: u64| if bits < threshold { scale } else { 0.0 };
    let mut mask = vec![0.0f32; shape.num_elements()];
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(task, chunk)| {
            let first = (task * CHUNK / 2) as u64;
            for (j, pair) in chunk.chunks_mut(2).enumerate() {
                let draw = splitmix64(seed, first + j as u64);
                pair[0] = pick(draw & 0xffff_ffff);
                if let Some(second) = pair.get_mut(1) {
                    *second = pick(draw >> 32);
                }
            }
        });
    TensorData::new(mask, shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel mask is the serial definition, element for element, on a length that ends
    /// mid-chunk and mid-pair (a wrong chunk offset repeats or skips draws).
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
