use super::*;
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};

/// The gradient norm of a step, read.
fn norm<B: burn::tensor::backend::Backend>(stats: &StepStats<B>) -> f64 {
    f64::from(stats.grad_norm.clone().into_scalar().elem::<f32>())
}

type AB = Autodiff<Flex>;

#[derive(Module, Debug)]
struct Tiny<B: Backend> {
    dense: Linear<B>,
    layer_norm: LayerNorm<B>,
}

#[test]
fn schedule_warms_up_then_decays() {
    let s = ScheduleConfig {
        warmup_steps: Some(10),
        ..Default::default()
    };
    assert!((lr_at(0, 100, 1.0, &s) - 0.1).abs() < 1e-12);
    assert!((lr_at(9, 100, 1.0, &s) - 1.0).abs() < 1e-12);
    assert!((lr_at(54, 100, 1.0, &s) - 0.5).abs() < 1e-12);
    assert!(lr_at(99, 100, 1.0, &s).abs() < 1e-12);
    let cos = ScheduleConfig {
        warmup_ratio: 0.1,
        decay: Decay::Cosine,
        ..Default::default()
    };
    assert!((lr_at(54, 100, 1.0, &cos) - 0.5).abs() < 1e-12);
    // NVIDIA's warmup_poly, phase 1 of the LAMB recipe: warmup 2,000 of 7,038 steps.
    let poly = ScheduleConfig {
        warmup_steps: Some(2000),
        decay: Decay::Poly,
        ..Default::default()
    };
    assert!((lr_at(1999, 7038, 6e-3, &poly) - 6e-3).abs() < 1e-15);
    let after = 6e-3 * (1.0 - 2001.0 / 7038.0f64).sqrt();
    assert!((lr_at(2000, 7038, 6e-3, &poly) - after).abs() < 1e-15);
    assert!((after / 6e-3 - 0.8459).abs() < 1e-4);
    assert!(lr_at(7037, 7038, 6e-3, &poly).abs() < 1e-15);
}

#[test]
fn decay_groups_follow_bert() {
    assert!(decays(
        "bert.encoder.layer.0.attention.self_attn.query.weight"
    ));
    assert!(decays("bert.embeddings.word_embeddings.weight"));
    assert!(!decays("bert.encoder.layer.0.output.dense.bias"));
    assert!(!decays("bert.embeddings.layer_norm.gamma"));
    assert!(!decays("cls.predictions.bias"));
}

/// One step against a hand computation of torch.optim.AdamW with clipping.
#[test]
fn one_step_matches_adamw_by_hand() {
    let device = Default::default();
    let model = Tiny::<AB> {
        dense: LinearConfig::new(2, 1).init(&device),
        layer_norm: LayerNormConfig::new(1).init(&device),
    };
    let w0: Vec<f32> = model.dense.weight.val().into_data().to_vec().expect("w");
    let b0: Vec<f32> = model
        .dense
        .bias
        .as_ref()
        .expect("b")
        .val()
        .into_data()
        .to_vec()
        .expect("b");
    let x = Tensor::<AB, 2>::from_floats([[3.0, 4.0]], &device);
    // loss = sum(dense(x)) → dW = x, db = 1; |g| = sqrt(9 + 16 + 1) > 1 → clipped.
    let loss = model.dense.forward(x).sum();
    let grads = loss.backward();
    let config = OptimizerConfig {
        learning_rate: 0.1,
        ..Default::default()
    };
    let mut opt = AdamW::<AB>::new(config.clone());
    let (model, stats) = opt.step(model, grads, 0.1);
    assert!((norm(&stats) - 26f64.sqrt()).abs() < 1e-5);
    let w1: Vec<f32> = model.dense.weight.val().into_data().to_vec().expect("w");
    let b1: Vec<f32> = model
        .dense
        .bias
        .as_ref()
        .expect("b")
        .val()
        .into_data()
        .to_vec()
        .expect("b");
    // After bias correction the first Adam step is g/(|g|+eps) ≈ sign(g) = 1 for every entry.
    for (before, after) in w0.iter().zip(&w1) {
        let expect = before - 0.1 * (1.0 - 1e-6) - 0.1 * 0.01 * before;
        assert!((after - expect).abs() < 1e-5, "{after} vs {expect}");
    }
    assert!(
        (b1[0] - (b0[0] - 0.1)).abs() < 1e-5,
        "bias: no weight decay"
    );
    let (step, state) = opt.state();
    assert_eq!(step, 1);
    assert!(state.iter().any(|(k, _)| k == "m.dense.weight"));
}

/// Two AdamW steps against a hand computation in f64 with one global gradient norm:
/// step 1's gradient `[3, 4 | 1]` (norm √26) is clipped to norm 1 as a whole, step 2's
/// (a tenth of it) is not. Adam's scale invariance hides clipping in one step, not in two;
/// per-tensor clipping (`[3, 4] / 5`, `1`) or none give other weights, checked to differ.
#[test]
fn global_norm_clipping_matches_a_hand_computation_over_two_steps() {
    let device = Default::default();
    let mut dense = LinearConfig::new(2, 1).init::<AB>(&device);
    dense.weight = Param::from_tensor(Tensor::from_floats([[0.3], [-0.2]], &device));
    dense.bias = Some(Param::from_tensor(Tensor::from_floats([0.1], &device)));
    let model = Tiny::<AB> {
        dense,
        layer_norm: LayerNormConfig::new(1).init(&device),
    };
    let config = OptimizerConfig {
        learning_rate: 0.1,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        ..Default::default()
    };
    let mut opt = AdamW::<AB>::new(config.clone());
    let x = Tensor::<AB, 2>::from_floats([[3.0, 4.0]], &device);
    let mut model = model;
    let mut norms = Vec::new();
    for c in [1.0f32, 0.1] {
        let grads = (model.dense.forward(x.clone()).sum() * c).backward();
        let (next, stats) = opt.step(model, grads, 0.1);
        model = next;
        norms.push(norm(&stats));
    }
    assert!((norms[0] - 26f64.sqrt()).abs() < 1e-5 && (norms[1] - 0.1 * 26f64.sqrt()).abs() < 1e-5);
    // The same two steps by hand; `clip` maps a step's gradient to the clipped one.
    let adam = |clip: &dyn Fn(&[f64; 3]) -> [f64; 3]| -> [f64; 3] {
        let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-6f64, 0.1f64);
        let mut w = [0.3f64, -0.2, 0.1];
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for (t, c) in [(1, 1.0), (2, 0.1)] {
            let g = clip(&[3.0 * c, 4.0 * c, c]);
            for i in 0..3 {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let m_hat = m[i] / (1.0 - b1.powi(t));
                let v_hat = v[i] / (1.0 - b2.powi(t));
                w[i] -= lr * m_hat / (v_hat.sqrt() + eps);
            }
        }
        w
    };
    let global = adam(&|g| {
        let n = (g[0] * g[0] + g[1] * g[1] + g[2] * g[2]).sqrt();
        let s = if n > 1.0 { 1.0 / (n + 1e-6) } else { 1.0 };
        [g[0] * s, g[1] * s, g[2] * s]
    });
    let per_tensor = adam(&|g| {
        let n = (g[0] * g[0] + g[1] * g[1]).sqrt();
        let s = if n > 1.0 { 1.0 / (n + 1e-6) } else { 1.0 };
        [g[0] * s, g[1] * s, g[2].clamp(-1.0, 1.0)]
    });
    let none = adam(&|g| *g);
    let w: Vec<f32> = model.dense.weight.val().into_data().to_vec().expect("w");
    let b: Vec<f32> = model
        .dense
        .bias
        .as_ref()
        .expect("b")
        .val()
        .into_data()
        .to_vec()
        .expect("b");
    let ours = [f64::from(w[0]), f64::from(w[1]), f64::from(b[0])];
    let gap = |a: &[f64; 3], b: &[f64; 3]| (0..3).map(|i| (a[i] - b[i]).abs()).fold(0.0, f64::max);
    assert!(gap(&ours, &global) < 1e-5, "{ours:?} vs {global:?}");
    assert!(
        gap(&global, &per_tensor) > 1e-3,
        "per-tensor clipping is told apart"
    );
    assert!(gap(&global, &none) > 1e-3, "no clipping is told apart");
}

/// Two accumulated half batches (mean losses) give the update of the whole batch.
#[test]
fn accumulated_micro_batches_equal_the_full_batch() {
    let device = Default::default();
    // Materialised parameters: a clone of a lazily initialised one would draw its own.
    let mut dense = LinearConfig::new(2, 1).init(&device);
    dense.weight = Param::from_tensor(Tensor::from_floats([[0.3], [-0.2]], &device));
    dense.bias = Some(Param::from_tensor(Tensor::from_floats([0.1], &device)));
    let model = Tiny::<AB> {
        dense,
        layer_norm: LayerNormConfig::new(1).init(&device),
    };
    let x = [[1.0f32, 2.0], [-1.0, 0.5], [3.0, -2.0], [0.5, 0.5]];
    let batch = |rows: &[[f32; 2]]| {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::<AB, 2>::from_data(TensorData::new(flat, [rows.len(), 2]), &device)
    };
    let loss = |m: &Tiny<AB>, rows: &[[f32; 2]]| m.dense.forward(batch(rows)).powi_scalar(2).mean();
    let config = OptimizerConfig {
        max_grad_norm: 0.5,
        ..Default::default()
    };
    let mut full = AdamW::<AB>::new(config.clone());
    let (a, sa) = full.step(model.clone(), loss(&model, &x).backward(), 0.1);
    let mut acc = Accumulation::default();
    acc.add(&model, loss(&model, &x[..2]).backward());
    acc.add(&model, loss(&model, &x[2..]).backward());
    let (grads, scale) = acc.take();
    assert_eq!(scale, 0.5);
    let mut micro = AdamW::<AB>::new(config);
    let (b, sb) = micro.step_params(model, &grads, scale, 0.1);
    assert!((norm(&sa) - norm(&sb)).abs() < 1e-5, "{sa:?} {sb:?}");
    let wa: Vec<f32> = a.dense.weight.val().into_data().to_vec().expect("w");
    let wb: Vec<f32> = b.dense.weight.val().into_data().to_vec().expect("w");
    for (p, q) in wa.iter().zip(&wb) {
        assert!((p - q).abs() < 1e-6, "{wa:?} vs {wb:?}");
    }
}

#[derive(Module, Debug)]
struct Dense<B: Backend> {
    dense: Linear<B>,
}

/// Five LAMB steps against the independent numpy reference of `scripts/lamb_reference.py`
/// (`tests/fixtures/lamb/reference.json`): the same initial weights and gradients (the loss
/// `Σ w ⊙ G_t` has gradient `G_t`), the first two steps clipped to the global norm.
#[test]
fn lamb_matches_the_reference_over_five_steps() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/lamb/reference.json"
    );
    let text = std::fs::read_to_string(path).expect("LAMB fixture");
    let fixture: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect()
    };
    let device = Default::default();
    let weight = |v: &serde_json::Value| {
        Tensor::<AB, 2>::from_data(TensorData::new(floats(v), [2, 3]), &device)
    };
    let bias = |v: &serde_json::Value| {
        Tensor::<AB, 1>::from_data(TensorData::new(floats(v), [3]), &device)
    };
    let initial = &fixture["initial"];
    let mut model = Dense::<AB> {
        dense: Linear {
            weight: Param::from_tensor(weight(&initial["dense.weight"])),
            bias: Some(Param::from_tensor(bias(&initial["dense.bias"]))),
        },
    };
    let hyper = &fixture["hyper"];
    let number = |k: &str| hyper[k].as_f64().expect("hyper-parameter");
    let config = OptimizerConfig {
        name: OptimizerName::Lamb,
        beta1: number("beta1"),
        beta2: number("beta2"),
        epsilon: number("epsilon"),
        weight_decay: number("weight_decay"),
        max_grad_norm: number("max_grad_norm"),
        ..Default::default()
    };
    let mut opt = AdamW::<AB>::new(config);
    let lrs = floats(&fixture["learning_rates"]);
    for (t, g) in fixture["grads"]
        .as_array()
        .expect("grads")
        .iter()
        .enumerate()
    {
        let loss = (model.dense.weight.val() * weight(&g["dense.weight"])).sum()
            + (model.dense.bias.as_ref().expect("bias").val() * bias(&g["dense.bias"])).sum();
        let grads = loss.backward();
        model = opt.step(model, grads, f64::from(lrs[t])).0;
    }
    let got_w: Vec<f32> = model.dense.weight.val().into_data().to_vec().expect("w");
    let got_b: Vec<f32> = model
        .dense
        .bias
        .expect("bias")
        .val()
        .into_data()
        .to_vec()
        .expect("b");
    for (name, got) in [("dense.weight", got_w), ("dense.bias", got_b)] {
        let want = floats(&fixture["final"][name]);
        let start = floats(&initial[name]);
        for ((g, w), s) in got.iter().zip(&want).zip(&start) {
            assert!((g - w).abs() < 1e-6, "{name}: {g} vs reference {w}");
            assert!(
                (w - s).abs() > 1e-3,
                "{name}: the reference moved the weights"
            );
        }
    }
}
