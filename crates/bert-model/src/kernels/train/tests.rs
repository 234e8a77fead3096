use super::*;
use burn::tensor::activation::{gelu as burn_gelu, log_softmax, softmax};
use burn::tensor::ops::ModuleOps;
use burn::tensor::{Distribution, Int, TensorData};

fn max_abs_diff(a: Tensor<Flex, 1>, b: Tensor<Flex, 1>) -> f32 {
    (a - b).abs().max().into_scalar()
}

fn flat<const D: usize>(t: Tensor<Flex, D>) -> Tensor<Flex, 1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

/// Value and gradient of `f` (fused) and `g` (Burn's ops) at `x`, weighted by `w` so that
/// every output element carries a different gradient.
fn compare<const D: usize, const R: usize>(
    x: Tensor<Ad, D>,
    w: Tensor<Ad, R>,
    fused: impl Fn(Tensor<Ad, D>) -> Tensor<Ad, R>,
    reference: impl Fn(Tensor<Ad, D>) -> Tensor<Ad, R>,
) -> (f32, f32) {
    let run = |f: &dyn Fn(Tensor<Ad, D>) -> Tensor<Ad, R>| {
        let x = x.clone().detach().require_grad();
        let y = f(x.clone());
        let grads = (y.clone() * w.clone()).sum().backward();
        (y.inner(), x.grad(&grads).expect("gradient"))
    };
    let (y1, g1) = run(&fused);
    let (y2, g2) = run(&reference);
    (
        max_abs_diff(flat(y1), flat(y2)),
        max_abs_diff(flat(g1), flat(g2)),
    )
}

#[test]
fn masked_softmax_matches_burn_ops() {
    let device = Default::default();
    Ad::seed(&device, 11);
    let (batch, heads, seq) = (3, 2, 37);
    let scores = Tensor::<Ad, 4>::random(
        [batch, heads, seq, seq],
        Distribution::Normal(0.0, 3.0),
        &device,
    );
    // Sequence b has 37 - 5b real tokens.
    let mask: Vec<f32> = (0..batch)
        .flat_map(|b| (0..seq).map(move |j| if j < seq - 5 * b { 0.0 } else { -10_000.0 }))
        .collect();
    let mask = Tensor::<Ad, 4>::from_data(TensorData::new(mask, [batch, 1, 1, seq]), &device);
    let w = Tensor::<Ad, 4>::random(
        [batch, heads, seq, seq],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let scale = 0.125;
    let (dy, dg) = compare(
        scores,
        w,
        |s| masked_softmax(s, mask.clone(), scale),
        |s| softmax(s * scale + mask.clone(), 3),
    );
    assert!(dy < 1e-6, "probabilities differ by {dy}");
    assert!(dg < 1e-6, "gradients differ by {dg}");
}

#[test]
fn cross_entropy_matches_burn_ops() {
    let device = Default::default();
    Ad::seed(&device, 12);
    let (n, classes) = (29, 1_001);
    let logits = Tensor::<Ad, 2>::random([n, classes], Distribution::Normal(0.0, 4.0), &device);
    let targets: Vec<i64> = (0..n as i64).map(|r| (r * 347) % classes as i64).collect();
    let targets = Tensor::<Ad, 1, Int>::from_data(TensorData::new(targets, [n]), &device);
    let w = Tensor::<Ad, 1>::from_data([1.7f32], &device);
    let (dy, dg) = compare(
        logits,
        w,
        |x| cross_entropy(x, targets.clone()),
        |x| {
            log_softmax(x, 1)
                .gather(1, targets.clone().reshape([n, 1]))
                .mean()
                .neg()
        },
    );
    assert!(dy < 1e-5, "losses differ by {dy}");
    assert!(dg < 5e-7, "gradients differ by {dg}");
}

#[test]
fn gelu_matches_burn_ops() {
    let device = Default::default();
    Ad::seed(&device, 13);
    let x = Tensor::<Ad, 3>::random([4, 33, 65], Distribution::Normal(0.0, 3.0), &device);
    let w = Tensor::<Ad, 3>::random([4, 33, 65], Distribution::Normal(0.0, 1.0), &device);
    let (dy, dg) = compare(x, w, gelu, burn_gelu);
    assert!(dy < 1e-5, "values differ by {dy}");
    assert!(dg < 1e-5, "gradients differ by {dg}");
}

#[test]
fn split_and_merge_heads_match_burn_ops() {
    let device = Default::default();
    Ad::seed(&device, 14);
    let (batch, seq, heads, head_dim) = (3, 7, 4, 5);
    let x = Tensor::<Ad, 3>::random(
        [batch, seq, heads * head_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let w = Tensor::<Ad, 4>::random(
        [batch, heads, seq, head_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let split = |x: Tensor<Ad, 3>| x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
    let (dy, dg) = compare(x.clone(), w, |x| split_heads(x, heads), split);
    assert_eq!((dy, dg), (0.0, 0.0));
    // merge ∘ split is the identity, and its gradient passes through unchanged.
    let w = Tensor::<Ad, 3>::random(
        [batch, seq, heads * head_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let (dy, dg) = compare(x, w, |x| merge_heads(split_heads(x, heads)), |x| x * 1.0);
    assert_eq!((dy, dg), (0.0, 0.0));
}

#[test]
fn layer_norm_matches_burn_ops() {
    let device = Default::default();
    Ad::seed(&device, 15);
    let width = 67;
    let x = Tensor::<Ad, 3>::random([5, 13, width], Distribution::Normal(0.5, 2.0), &device);
    let w = Tensor::<Ad, 3>::random([5, 13, width], Distribution::Normal(0.0, 1.0), &device);
    let gamma =
        Tensor::<Ad, 1>::random([width], Distribution::Normal(1.0, 0.3), &device).require_grad();
    let beta =
        Tensor::<Ad, 1>::random([width], Distribution::Normal(0.0, 0.3), &device).require_grad();
    let reference = |x: Tensor<Ad, 3>, gamma: Tensor<Ad, 1>, beta: Tensor<Ad, 1>| {
        Tensor::from_primitive(TensorPrimitive::Float(Ad::layer_norm(
            x.into_primitive().tensor(),
            gamma.into_primitive().tensor(),
            Some(beta.into_primitive().tensor()),
            1e-12,
        )))
    };
    // x's value and gradient.
    let (dy, dg) = compare(
        x.clone(),
        w.clone(),
        |x| layer_norm(x, gamma.clone(), Some(beta.clone()), 1e-12),
        |x| reference(x, gamma.clone(), beta.clone()),
    );
    assert!(dy < 1e-5, "values differ by {dy}");
    assert!(dg < 1e-5, "input gradients differ by {dg}");
    // gamma's and beta's gradients.
    let params = |fused: bool| {
        let (gamma, beta) = (
            gamma.clone().detach().require_grad(),
            beta.clone().detach().require_grad(),
        );
        let y = if fused {
            layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-12)
        } else {
            reference(x.clone(), gamma.clone(), beta.clone())
        };
        let grads = (y * w.clone()).sum().backward();
        let g = |t: &Tensor<Ad, 1>| t.grad(&grads).expect("gradient");
        (g(&gamma), g(&beta))
    };
    let ((g1, b1), (g2, b2)) = (params(true), params(false));
    assert!(max_abs_diff(g1, g2) < 1e-4, "gamma gradients differ");
    assert!(max_abs_diff(b1, b2) < 1e-4, "beta gradients differ");
}

#[test]
fn untracked_inputs_record_nothing() {
    let device = Default::default();
    let x = Tensor::<Ad, 2>::ones([2, 3], &device);
    let y = gelu(x);
    assert!(!y.is_require_grad());
}

/// The fused `Linear` against Burn's: the value and the gradients of the input, the weight and
/// the bias, with rows enough for the GEMMs to run on several threads.
#[test]
fn dense_matches_burn_linear_values_and_gradients() {
    use burn::nn::LinearConfig;
    let device = Default::default();
    Ad::seed(&device, 5);
    let linear = LinearConfig::new(48, 72).init::<Ad>(&device);
    let bias = linear.bias.as_ref().expect("a bias").val();
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<Ad, 3>::random([4, 50, 48], normal, &device);
    let w = Tensor::<Ad, 3>::random([4, 50, 72], normal, &device);
    let run = |fused: bool| {
        let x = x.clone().detach().require_grad();
        let y = if fused {
            dense(linear.weight.val(), bias.clone(), x.clone())
        } else {
            crate::ops::generic::dense(&linear, x.clone())
        };
        let grads = (y.clone() * w.clone()).sum().backward();
        let grad = |t: Tensor<Ad, 3>| flat(t.grad(&grads).expect("x gradient"));
        (
            flat(y.inner()),
            grad(x),
            flat(linear.weight.val().grad(&grads).expect("weight gradient")),
            flat(bias.grad(&grads).expect("bias gradient")),
        )
    };
    let (fused, reference) = (run(true), run(false));
    let pairs = [
        ("value", fused.0, reference.0),
        ("x", fused.1, reference.1),
        ("weight", fused.2, reference.2),
        ("bias", fused.3, reference.3),
    ];
    for (what, a, b) in pairs {
        let d = max_abs_diff(a, b);
        assert!(d < 1e-4, "{what} differs by {d}");
    }
}
