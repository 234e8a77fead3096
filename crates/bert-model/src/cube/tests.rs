//! The CubeCL kernels against Burn's generic ops on wgpu, values and gradients (f32), on
//! sizes that are not multiples of the kernels' cube sizes. Without a GPU, Mesa's software
//! Vulkan (`apt-get install mesa-vulkan-drivers`) runs the same kernels; where no adapter
//! exists the tests say so and pass, except under `CI=true`, where that fails.
#![cfg(feature = "wgpu")]

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Wgpu};
use burn::tensor::{Int, Tensor, TensorData};

use super::fusion::{FusedCube, queued};
use crate::ops::{self, AdamWStep, generic};

type A = Autodiff<Wgpu>;

/// The wgpu device, or `None` (after saying so) where there is no adapter; under `CI=true`
/// no adapter fails the test.
fn device() -> Option<WgpuDevice> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = std::panic::catch_unwind(|| {
        let device = WgpuDevice::default();
        Tensor::<Wgpu, 1>::zeros([1], &device)
            .into_data()
            .to_vec::<f32>()
            .is_ok()
    })
    .unwrap_or(false);
    std::panic::set_hook(hook);
    if found {
        return Some(WgpuDevice::default());
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and no wgpu adapter: install mesa-vulkan-drivers"
    );
    eprintln!("SKIPPED: no wgpu adapter on this machine; install mesa-vulkan-drivers");
    None
}

/// `n` values in `[-scale, scale)` from SplitMix64 seeded with `seed`.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let u = crate::dropout::splitmix64(seed, i);
            ((u >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor<const D: usize>(data: &[f32], shape: [usize; D], device: &WgpuDevice) -> Tensor<A, D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device).require_grad()
}

fn host<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec().expect("f32 tensor")
}

/// Asserts `got` is within `tol` of `want` (absolute, scaled by the largest `|want|` above 1).
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (i, diff) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |best, (i, d)| {
            if d > best.1 || d.is_nan() {
                (i, d)
            } else {
                best
            }
        });
    assert!(
        diff <= tol * scale,
        "{what}: max difference {diff} at {i} ({} vs {}), tolerance {}",
        got[i],
        want[i],
        tol * scale
    );
}

#[test]
fn the_kernels_are_for_burns_wgpu_backend() {
    // `burn::backend::Wgpu` with fusion is the type the kernels are written for; if Burn
    // changed it, nothing would dispatch to them.
    assert_eq!(
        std::any::TypeId::of::<Wgpu>(),
        std::any::TypeId::of::<FusedCube<cubecl::wgpu::WgpuRuntime, u32>>()
    );
    assert!(super::is_autodiff_cube::<A>());
    assert!(!super::is_autodiff_cube::<Wgpu>());
    assert!(super::is_cube::<Wgpu>());
    assert!(!super::is_cube::<A>());
    assert!(!super::is_cube::<burn::backend::Flex>());
    assert!(!super::is_autodiff_cube::<Autodiff<burn::backend::Flex>>());
}

/// LayerNorm of `x (+ residual)` `[2, 37, width]`: value and every gradient, kernel against
/// Burn's ops, under a random upstream gradient.
fn check_layer_norm(width: usize, with_residual: bool, device: &WgpuDevice) {
    let shape = [2, 37, width];
    let n = 2 * 37 * width;
    let (xs, rs, ws) = (values(n, 1, 2.0), values(n, 2, 1.0), values(n, 3, 1.0));
    let (gs, bs) = (values(width, 4, 1.5), values(width, 5, 0.5));
    let eps = 1e-12;
    let run = |fused: bool| {
        let (x, r) = (tensor(&xs, shape, device), tensor(&rs, shape, device));
        let (gamma, beta) = (tensor(&gs, [width], device), tensor(&bs, [width], device));
        let residual = with_residual.then(|| r.clone());
        let before = queued();
        let y = if fused {
            super::layer_norm(x.clone(), residual, gamma.clone(), beta.clone(), eps)
        } else {
            let input = match residual {
                Some(r) => x.clone() + r,
                None => x.clone(),
            };
            generic::layer_norm(input, gamma.clone(), Some(beta.clone()), eps)
        };
        let grads = (y.clone() * tensor(&ws, shape, device)).sum().backward();
        assert_eq!(queued() > before, fused, "the kernels ran only when asked");
        let grad = |t: &Tensor<A, 3>| host(t.grad(&grads).expect("gradient"));
        let grad1 = |t: &Tensor<A, 1>| host(t.grad(&grads).expect("gradient"));
        let r_grad = with_residual.then(|| grad(&r));
        (host(y), grad(&x), r_grad, grad1(&gamma), grad1(&beta))
    };
    let (got, want) = (run(true), run(false));
    let what = format!("layer_norm width {width} residual {with_residual}");
    assert_close(&format!("{what}: value"), &got.0, &want.0, 1e-5);
    assert_close(&format!("{what}: dx"), &got.1, &want.1, 1e-5);
    if let (Some(a), Some(b)) = (&got.2, &want.2) {
        assert_close(&format!("{what}: dresidual"), a, b, 1e-5);
    }
    assert_close(&format!("{what}: dgamma"), &got.3, &want.3, 1e-5);
    assert_close(&format!("{what}: dbeta"), &got.4, &want.4, 1e-5);
}

#[test]
fn layer_norm_matches_burns_values_and_gradients() {
    let Some(device) = device() else { return };
    // Narrower than a cube, wider than one (threads stride), with and without the residual.
    check_layer_norm(100, true, &device);
    check_layer_norm(300, false, &device);
    check_layer_norm(300, true, &device);
}

#[test]
fn row_kernels_cover_more_rows_than_one_grid_axis() {
    let Some(device) = device() else { return };
    // 70,000 rows: past WebGPU's 65,535 cubes per axis, so the grid's second axis is used.
    let (rows, width) = (70_000, 3);
    let xs = values(rows * width, 7, 1.0);
    let ones = vec![1.0; width];
    let zeros = vec![0.0; width];
    let x = tensor(&xs, [rows, width], &device);
    let (g, b) = (
        tensor(&ones, [width], &device),
        tensor(&zeros, [width], &device),
    );
    let got = host(super::layer_norm(
        x.clone(),
        None,
        g.clone(),
        b.clone(),
        1e-5,
    ));
    let want = host(generic::layer_norm(x, g, Some(b), 1e-5));
    assert_close("layer_norm over 70,000 rows", &got, &want, 1e-5);
}

#[test]
fn cross_entropy_matches_burns_value_and_gradient() {
    let Some(device) = device() else { return };
    // 74 rows (2 · 37) over a vocabulary of 1,031: rows wider than a cube, odd sizes.
    let (rows, classes) = (74, 1031);
    let logits = values(rows * classes, 11, 8.0);
    let targets: Vec<i64> = (0..rows as i64)
        .map(|i| (i * 389 + 7) % classes as i64)
        .collect();
    let run = |fused: bool| {
        let x = tensor(&logits, [rows, classes], &device);
        let t = Tensor::<A, 1, Int>::from_data(TensorData::new(targets.clone(), [rows]), &device);
        let before = queued();
        let loss = if fused {
            ops::cross_entropy(x.clone(), t)
        } else {
            generic::cross_entropy(x.clone(), t)
        };
        let grads = (loss.clone() * 3.0).backward();
        assert_eq!(queued() > before, fused, "crate::ops chose the kernels");
        (host(loss), host(x.grad(&grads).expect("gradient")))
    };
    let (got, want) = (run(true), run(false));
    assert_close("cross_entropy: loss", &got.0, &want.0, 1e-5);
    assert_close("cross_entropy: dlogits", &got.1, &want.1, 1e-5);
}

#[test]
fn bias_gelu_matches_burns_value_and_gradients() {
    let Some(device) = device() else { return };
    let (rows, width) = (74, 300);
    let (zs, bs, ws) = (
        values(rows * width, 21, 4.0),
        values(width, 22, 1.0),
        values(rows * width, 23, 1.0),
    );
    let run = |fused: bool| {
        let z = tensor(&zs, [rows, width], &device);
        let b = tensor(&bs, [width], &device);
        let before = queued();
        let y = if fused {
            super::bias_gelu(z.clone(), b.clone())
        } else {
            generic::gelu_composed(z.clone() + b.clone().unsqueeze::<2>())
        };
        let grads = (y.clone() * tensor(&ws, [rows, width], &device))
            .sum()
            .backward();
        assert_eq!(queued() > before, fused);
        (
            host(y),
            host(z.grad(&grads).expect("gradient")),
            host(b.grad(&grads).expect("gradient")),
        )
    };
    let (got, want) = (run(true), run(false));
    assert_close("bias_gelu: value", &got.0, &want.0, 1e-5);
    assert_close("bias_gelu: dz", &got.1, &want.1, 1e-5);
    assert_close("bias_gelu: dbias", &got.2, &want.2, 1e-5);
}

#[test]
fn the_model_ops_choose_the_kernels_on_wgpu() {
    let Some(device) = device() else { return };
    // A dense layer with exact GELU and a LayerNorm with residual, through crate::ops as the
    // encoder calls them: they queue kernels, and agree with Burn's composition.
    let linear = burn::nn::LinearConfig::new(40, 70).init::<A>(&device);
    let norm = crate::layer_norm::LayerNormConfig::new(40).init::<A>(&device);
    let dropout = crate::dropout::Dropout { prob: 0.0 };
    let x = tensor(&values(2 * 37 * 40, 31, 1.0), [2, 37, 40], &device);
    let before = queued();
    let h = ops::dense_activation(&linear, crate::config::HiddenAct::Gelu, x.clone());
    let y = ops::dense_add_layer_norm(
        &burn::nn::LinearConfig::new(70, 40).init(&device),
        &dropout,
        h.clone(),
        x.clone(),
        &norm,
    );
    assert!(
        queued() >= before + 2,
        "dense_activation and dense_add_layer_norm queue kernels"
    );
    let want = generic::activation(crate::config::HiddenAct::Gelu, generic::dense(&linear, x));
    assert_close("dense_activation", &host(h), &host(want), 1e-5);
    assert_eq!(y.dims(), [2, 37, 40]);
}

#[test]
fn adamw_matches_burns_update() {
    let Some(device) = device() else { return };
    let n = 1037;
    let (p, g, m, v) = (
        values(n, 41, 1.0),
        values(n, 42, 0.1),
        values(n, 43, 0.01),
        values(n, 44, 0.001)
            .into_iter()
            .map(f32::abs)
            .collect::<Vec<_>>(),
    );
    let t = |d: &[f32]| Tensor::<Wgpu, 1>::from_data(TensorData::new(d.to_vec(), [n]), &device);
    for (weight_decay, device_scale, grad_scale) in
        [(0.01, false, 0.5), (0.0, true, 1.0), (0.01, true, 1.0)]
    {
        let step = AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-6,
            weight_decay,
            step: 3,
            grad_scale,
        };
        let scale = || device_scale.then(|| Tensor::<Wgpu, 1>::from_floats([0.25], &device));
        let got = ops::adamw(t(&p), t(&g), t(&m), t(&v), scale(), &step);
        let want = generic::adamw(t(&p), t(&g), t(&m), t(&v), scale(), &step);
        for (what, (a, b)) in ["next", "m", "v"].iter().zip(got.into_iter().zip(want)) {
            let what = format!("adamw {what} (decay {weight_decay}, device scale {device_scale})");
            assert_close(&what, &host(a), &host(b), 1e-6);
        }
    }
}

#[test]
fn the_generic_gelu_gradient_is_exact_on_wgpu() {
    let Some(device) = device() else { return };
    // Burn's own GELU backward on wgpu is the tanh approximation's derivative; the generic
    // path (half precision, fused kernels off) must give the exact one, as the kernel does.
    let (rows, width) = (37, 64);
    let zs = values(rows * width, 51, 4.0);
    let zero = vec![0.0; width];
    let grad = |fused: bool| {
        let z = tensor(&zs, [rows, width], &device);
        let y = if fused {
            super::bias_gelu(z.clone(), tensor(&zero, [width], &device))
        } else {
            generic::activation(crate::config::HiddenAct::Gelu, z.clone())
        };
        let grads = y.sum().backward();
        host(z.grad(&grads).expect("gradient"))
    };
    assert_close("generic GELU gradient", &grad(false), &grad(true), 1e-5);
}

/// Attention of `[2, seq, heads · head_dim]` projections with the second sequence's last 9
/// positions padded: the kernels' context and `q`/`k`/`v` gradients against Burn's ops
/// (softmax, the host-computed dropout mask when `prob` > 0, matmuls).
fn check_attention(seq: usize, heads: usize, head_dim: usize, prob: f64, device: &WgpuDevice) {
    let (batch, width) = (2, heads * head_dim);
    let n = batch * seq * width;
    let shape = [batch, seq, width];
    let (qs, ks, vs, ws) = (
        values(n, 61, 1.5),
        values(n, 62, 1.5),
        values(n, 63, 1.0),
        values(n, 64, 1.0),
    );
    let bias: Vec<f32> = (0..batch * seq)
        .map(|p| if p >= seq + seq - 9 { f32::MIN } else { 0.0 })
        .collect();
    let seed = 12_345u32;
    let keep = (1.0 - prob) as f32;
    let mask = super::attention::host_dropout_mask(seed, batch * heads * seq, seq, keep);
    let run = |fused: bool| {
        let (q, k, v) = (
            tensor(&qs, shape, device),
            tensor(&ks, shape, device),
            tensor(&vs, shape, device),
        );
        let mask_bias =
            Tensor::<A, 4>::from_data(TensorData::new(bias.clone(), [batch, 1, 1, seq]), device);
        let context = if fused {
            let seed =
                Tensor::<Wgpu, 1, Int>::from_data(TensorData::new(vec![seed as i32], [1]), device);
            super::attention::attention::<cubecl::wgpu::WgpuRuntime, u32>(
                q.clone(),
                k.clone(),
                v.clone(),
                mask_bias,
                heads,
                prob,
                seed,
            )
        } else {
            let [qh, kh, vh] = [&q, &k, &v].map(|t| generic::split_heads(t.clone(), heads));
            let mut probs = generic::masked_softmax(qh.matmul(kh.transpose()), mask_bias, head_dim);
            if prob > 0.0 {
                let mask = TensorData::new(mask.clone(), [batch, heads, seq, seq]);
                probs = probs * Tensor::<A, 4>::from_data(mask, device);
            }
            generic::merge_heads(probs.matmul(vh))
        };
        let grads = (context.clone() * tensor(&ws, shape, device))
            .sum()
            .backward();
        let grad = |t: &Tensor<A, 3>| host(t.grad(&grads).expect("gradient"));
        [host(context), grad(&q), grad(&k), grad(&v)]
    };
    let (got, want) = (run(true), run(false));
    for (what, (a, b)) in ["context", "dq", "dk", "dv"]
        .iter()
        .zip(got.iter().zip(&want))
    {
        let what = format!("attention T={seq} {heads}×{head_dim}, dropout {prob}: {what}");
        assert_close(&what, a, b, 1e-5);
    }
}

#[test]
fn attention_matches_burns_ops_without_dropout() {
    let Some(device) = device() else { return };
    check_attention(37, 2, 32, 0.0, &device);
    check_attention(37, 1, 64, 0.0, &device);
    // Longer than a cube has threads: each thread takes several keys (and queries).
    check_attention(150, 1, 64, 0.0, &device);
}

#[test]
fn attention_with_dropout_matches_burns_ops_under_the_same_mask() {
    let Some(device) = device() else { return };
    check_attention(37, 2, 32, 0.1, &device);
    check_attention(150, 1, 64, 0.3, &device);
}

#[test]
fn the_attention_dropout_mask_keeps_the_expected_share() {
    // Over 2 · 12 · 128² draws, the share kept is `keep` to within 0.5%.
    let mask = super::attention::host_dropout_mask(7, 2 * 12 * 128, 128, 0.9);
    let kept = mask.iter().filter(|v| **v > 0.0).count() as f64 / mask.len() as f64;
    assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
}
