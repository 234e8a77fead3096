//! BERT's optimizer: AdamW with decoupled weight decay not applied to biases and LayerNorm
//! parameters, global-norm gradient clipping, and a warmup + linear (or cosine) decay schedule.
//!
//! Written here rather than taken from `burn::optim` because BERT needs three things Burn 0.21's
//! AdamW does not give: weight-decay groups, one global gradient norm (Burn clips per tensor),
//! and optimizer state keyed by parameter *path*, so that a checkpoint restores it exactly into a
//! freshly built model (parameter ids change between processes).

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::ElementConversion;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// `[optimizer]` of a config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    #[serde(default = "d::lr")]
    pub learning_rate: f64,
    /// Adam β₁.
    #[serde(default = "d::beta1")]
    pub beta1: f64,
    /// Adam β₂.
    #[serde(default = "d::beta2")]
    pub beta2: f64,
    /// Adam ε (BERT: 1e-6).
    #[serde(default = "d::eps")]
    pub epsilon: f64,
    /// Decoupled weight decay (BERT: 0.01), not applied to biases and LayerNorm.
    #[serde(default = "d::wd")]
    pub weight_decay: f64,
    /// Global gradient-norm clip (BERT: 1.0); 0 disables clipping.
    #[serde(default = "d::clip")]
    pub max_grad_norm: f64,
}

mod d {
    pub fn lr() -> f64 {
        1e-4
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.999
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn wd() -> f64 {
        0.01
    }
    pub fn clip() -> f64 {
        1.0
    }
    pub fn warmup() -> f64 {
        0.0
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

/// Shape of the learning-rate curve after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Linear to zero at the last step (BERT).
    #[default]
    Linear,
    /// Half cosine to zero.
    Cosine,
    /// Constant after warmup.
    Constant,
}

/// `[schedule]` of a config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Warmup steps (wins over `warmup_ratio` when both are set).
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// Warmup as a fraction of the total steps.
    #[serde(default = "d::warmup")]
    pub warmup_ratio: f64,
    /// Decay after warmup.
    #[serde(default)]
    pub decay: Decay,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

/// The learning rate of (0-based) `step` out of `total` steps: linear warmup from 0 to `peak`,
/// then the decay.
pub fn lr_at(step: u64, total: u64, peak: f64, schedule: &ScheduleConfig) -> f64 {
    let warmup = schedule
        .warmup_steps
        .unwrap_or((schedule.warmup_ratio * total as f64).round() as u64);
    let s = step as f64 + 1.0;
    if s <= warmup as f64 {
        return peak * s / warmup.max(1) as f64;
    }
    let remaining = (total.saturating_sub(warmup)).max(1) as f64;
    let progress = ((s - warmup as f64) / remaining).clamp(0.0, 1.0);
    match schedule.decay {
        Decay::Linear => peak * (1.0 - progress),
        Decay::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        Decay::Constant => peak,
    }
}

/// Whether weight decay applies to the parameter at `path` (not biases, not LayerNorm).
pub fn decays(path: &str) -> bool {
    !(path.ends_with("bias")
        || path.contains("layer_norm")
        || path.ends_with("beta")
        || path.ends_with("gamma"))
}

/// Adam moments of one parameter, flattened.
#[derive(Debug, Clone)]
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// AdamW state: step count and moments by parameter path.
#[derive(Debug)]
pub struct AdamW<B: AutodiffBackend> {
    config: OptimizerConfig,
    step: u64,
    moments: BTreeMap<String, Moments<B::InnerBackend>>,
}

struct GradNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.powi_scalar(2).sum();
            self.sum = Some(match self.sum.take() {
                Some(s) => s + sq,
                None => sq,
            });
        }
    }
}

struct Update<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    lr: f64,
    scale: f64,
    config: &'a OptimizerConfig,
    step: u64,
    moments: &'a mut BTreeMap<String, Moments<B::InnerBackend>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.get::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let path = self.path.join(".");
        let shape = tensor.shape();
        let n = shape.num_elements();
        let value = tensor.inner().reshape([n]);
        let g = grad.reshape([n]) * self.scale;
        let c = self.config;
        let state = self.moments.remove(&path).unwrap_or_else(|| Moments {
            m: value.zeros_like(),
            v: value.zeros_like(),
        });
        let m = state.m * c.beta1 + g.clone() * (1.0 - c.beta1);
        let v = state.v * c.beta2 + g.powi_scalar(2) * (1.0 - c.beta2);
        let t = self.step as i32;
        let m_hat = m.clone() / (1.0 - c.beta1.powi(t));
        let v_hat = v.clone() / (1.0 - c.beta2.powi(t));
        let mut next = value.clone() - m_hat / (v_hat.sqrt() + c.epsilon) * self.lr;
        if c.weight_decay > 0.0 && decays(&path) {
            // Decoupled decay on the pre-update value (torch.optim.AdamW).
            next = next - value * (self.lr * c.weight_decay);
        }
        self.moments.insert(path, Moments { m, v });
        let next = Tensor::<B, D>::from_inner(next.reshape(shape)).require_grad();
        Param::from_mapped_value(id, next, mapper)
    }
}

/// The number of values of each float parameter, by path.
struct ParamSizes<B> {
    path: Vec<String>,
    sizes: BTreeMap<String, usize>,
    backend: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for ParamSizes<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.sizes
            .insert(self.path.join("."), param.shape().num_elements());
    }
}

/// Whether every float parameter of a module is finite (reads each back: for the rare
/// moments a model is written).
pub fn all_finite<B: Backend, M: burn::module::Module<B>>(model: &M) -> bool {
    struct Finite {
        ok: bool,
    }
    impl<B: Backend> ModuleVisitor<B> for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.ok {
                let v = param.val();
                let bad = v.clone().is_nan().any().into_scalar().elem::<bool>()
                    || v.is_inf().any().into_scalar().elem::<bool>();
                self.ok = !bad;
            }
        }
    }
    let mut f = Finite { ok: true };
    model.visit(&mut f);
    f.ok
}

/// Statistics of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

impl<B: AutodiffBackend> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(config: OptimizerConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Clips gradients to the global norm, then applies one AdamW update at learning rate `lr`
    /// (the training loops go through [`AdamW::step_params`], by way of `crate::ddp`).
    #[cfg(test)]
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        model: M,
        grads: B::Gradients,
        lr: f64,
    ) -> (M, StepStats) {
        let grads = GradientsParams::from_grads(grads, &model);
        self.step_params(model, &grads, 1.0, lr)
    }

    /// Clips gradients (by parameter id, first multiplied by `grad_scale`: 1/k for the sum of k
    /// micro-batches, so clipping sees the averaged gradient) to the global norm, then applies
    /// one AdamW update at learning rate `lr`.
    pub fn step_params<M: AutodiffModule<B>>(
        &mut self,
        model: M,
        grads: &GradientsParams,
        grad_scale: f64,
        lr: f64,
    ) -> (M, StepStats) {
        let mut norm = GradNorm::<B> { grads, sum: None };
        model.visit(&mut norm);
        let grad_norm = norm
            .sum
            .map(|s| f64::from(s.into_scalar().elem::<f32>()).sqrt())
            .unwrap_or(0.0)
            * grad_scale;
        let max = self.config.max_grad_norm;
        let scale = grad_scale
            * if max > 0.0 && grad_norm > max {
                max / (grad_norm + 1e-6)
            } else {
                1.0
            };
        self.step += 1;
        let mut update = Update::<B> {
            grads,
            path: Vec::new(),
            lr,
            scale,
            config: &self.config,
            step: self.step,
            moments: &mut self.moments,
        };
        let model = model.map(&mut update);
        (model, StepStats { grad_norm, lr })
    }

    /// The state as host tensors (`m.<path>`, `v.<path>`) and the step count, for checkpoints.
    pub fn state(&self) -> (u64, Vec<(String, TensorData)>) {
        let mut tensors = Vec::new();
        for (path, mo) in &self.moments {
            tensors.push((format!("m.{path}"), mo.m.to_data()));
            tensors.push((format!("v.{path}"), mo.v.to_data()));
        }
        (self.step, tensors)
    }

    /// Restores what [`AdamW::state`] saved, checked against `model`: every moment must
    /// belong to a parameter of the model (by path) and hold as many values as it; an entry
    /// that does not is an error naming it.
    pub fn load_state<M: AutodiffModule<B>>(
        &mut self,
        step: u64,
        tensors: Vec<(String, TensorData)>,
        model: &M,
        device: &burn::tensor::Device<B::InnerBackend>,
    ) -> anyhow::Result<()> {
        let mut sizes = ParamSizes::<B> {
            path: Vec::new(),
            sizes: BTreeMap::new(),
            backend: std::marker::PhantomData,
        };
        model.visit(&mut sizes);
        self.step = step;
        self.moments.clear();
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, data) in tensors {
            let param = name
                .strip_prefix("m.")
                .or_else(|| name.strip_prefix("v."))
                .unwrap_or(&name);
            let Some(&size) = sizes.sizes.get(param) else {
                anyhow::bail!("optimizer state: {name} belongs to no parameter of the model");
            };
            if data.shape.len() != 1 || data.shape[0] != size {
                anyhow::bail!(
                    "optimizer state: {name} has shape {:?}, the parameter {param} has {size} values",
                    data.shape
                );
            }
            let tensor = Tensor::<B::InnerBackend, 1>::from_data(data, device);
            if let Some(path) = name.strip_prefix("m.") {
                m.insert(path.to_string(), tensor);
            } else if let Some(path) = name.strip_prefix("v.") {
                v.insert(path.to_string(), tensor);
            } else {
                anyhow::bail!("optimizer state has an unknown entry {name}");
            }
        }
        for (path, m) in m {
            let v = v
                .remove(&path)
                .ok_or_else(|| anyhow::anyhow!("optimizer state lacks v.{path}"))?;
            self.moments.insert(path, Moments { m, v });
        }
        Ok(())
    }
}

/// Gradients of the micro-batches of one optimizer step, summed (Burn's accumulator); the
/// optimizer divides by their count.
#[allow(missing_debug_implementations)]
pub struct Accumulation<M> {
    inner: GradientsAccumulator<M>,
    count: usize,
}

impl<M> Default for Accumulation<M> {
    fn default() -> Self {
        Self {
            inner: GradientsAccumulator::new(),
            count: 0,
        }
    }
}

impl<M> Accumulation<M> {
    /// Adds the gradients of one micro-batch's backward pass.
    pub fn add<B: AutodiffBackend>(&mut self, model: &M, grads: B::Gradients)
    where
        M: AutodiffModule<B>,
    {
        self.inner
            .accumulate(model, GradientsParams::from_grads(grads, model));
        self.count += 1;
    }

    /// The summed gradients and the scale that averages them; resets.
    pub fn take(&mut self) -> (GradientsParams, f64) {
        let scale = 1.0 / self.count.max(1) as f64;
        self.count = 0;
        (self.inner.grads(), scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Module;
    use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};

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
        assert!((stats.grad_norm - 26f64.sqrt()).abs() < 1e-5);
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
            norms.push(stats.grad_norm);
        }
        assert!(
            (norms[0] - 26f64.sqrt()).abs() < 1e-5 && (norms[1] - 0.1 * 26f64.sqrt()).abs() < 1e-5
        );
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
        let gap =
            |a: &[f64; 3], b: &[f64; 3]| (0..3).map(|i| (a[i] - b[i]).abs()).fold(0.0, f64::max);
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
        let loss =
            |m: &Tiny<AB>, rows: &[[f32; 2]]| m.dense.forward(batch(rows)).powi_scalar(2).mean();
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
        assert!((sa.grad_norm - sb.grad_norm).abs() < 1e-5, "{sa:?} {sb:?}");
        let wa: Vec<f32> = a.dense.weight.val().into_data().to_vec().expect("w");
        let wb: Vec<f32> = b.dense.weight.val().into_data().to_vec().expect("w");
        for (p, q) in wa.iter().zip(&wb) {
            assert!((p - q).abs() < 1e-6, "{wa:?} vs {wb:?}");
        }
    }
}
