//! BERT's optimizer: AdamW with decoupled weight decay not applied to biases and LayerNorm
//! parameters (or LAMB, `name = "lamb"`, for large batches), global-norm gradient clipping, and a
//! warmup + linear (or cosine) decay schedule.
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
use burn::tensor::{DType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use bert_model::ops::{AdamWStep, adamw};

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// AdamW (torch.optim.AdamW): Adam moments with bias correction, decoupled weight decay.
    #[default]
    Adamw,
    /// LAMB (You et al. 2019) as NVIDIA's apex FusedLAMB computes it by default: the AdamW
    /// update direction `m̂ / (√v̂ + ε) + weight_decay · w`, scaled per tensor by the trust
    /// ratio `‖w‖ / ‖update‖` (1 where either norm is 0) for the tensors that decay; biases and
    /// LayerNorm (no decay) take the plain step, as FusedLAMB without `use_nvlamb`.
    Lamb,
}

/// `[optimizer]` of a config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// The update rule: `"adamw"` (default) or `"lamb"`.
    #[serde(default)]
    pub name: OptimizerName,
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
    pub fn poly_power() -> f64 {
        0.5
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
    /// NVIDIA's BERT recipes' `warmup_poly`: `peak · (1 − s/total)^poly_power` after warmup,
    /// with `s` the (1-based) step counted from the run's start (not from the end of warmup), so the rate steps
    /// down from `peak` to `peak · (1 − warmup/total)^poly_power` when warmup ends, as theirs
    /// does.
    Poly,
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
    /// The exponent of `decay = "poly"` (NVIDIA's `degree`).
    #[serde(default = "d::poly_power")]
    pub poly_power: f64,
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
        Decay::Poly => peak * (1.0 - (s / total.max(1) as f64).min(1.0)).powf(schedule.poly_power),
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
            let sq = g.cast(DType::F32).powi_scalar(2).sum();
            self.sum = Some(match self.sum.take() {
                Some(s) => s + sq,
                None => sq,
            });
        }
    }
}

/// What the gradients are multiplied by before the update: the averaging factor alone, or
/// with the clip factor (`[1]`, on the device).
enum Scale<B: Backend> {
    Host(f64),
    Device(Tensor<B, 1>),
}

struct Update<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    lr: f64,
    scale: Scale<B::InnerBackend>,
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
        let g = grad.reshape([n]);
        let (grad_scale, scale) = match &self.scale {
            Scale::Host(scale) => (*scale, None),
            Scale::Device(scale) => (1.0, Some(scale.clone())),
        };
        let c = self.config;
        let state = self.moments.remove(&path).unwrap_or_else(|| Moments {
            m: value.zeros_like(),
            v: value.zeros_like(),
        });
        let step = AdamWStep {
            lr: self.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            epsilon: c.epsilon,
            weight_decay: if decays(&path) { c.weight_decay } else { 0.0 },
            step: self.step,
            grad_scale,
        };
        let [next, m, v] = match c.name {
            OptimizerName::Adamw => adamw(value, g, state.m, state.v, scale, &step),
            OptimizerName::Lamb => lamb(value, g, state.m, state.v, scale, &step),
        };
        self.moments.insert(path, Moments { m, v });
        let next = Tensor::<B, D>::from_inner(next.reshape(shape)).require_grad();
        Param::from_mapped_value(id, next, mapper)
    }
}

/// One LAMB update of a flattened parameter (see [`OptimizerName::Lamb`]), `[next, m, v]`, on
/// the device: the norms and the trust ratio are `[1]` tensors, never read.
fn lamb<B: Backend>(
    value: Tensor<B, 1>,
    grad: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    scale: Option<Tensor<B, 1>>,
    step: &AdamWStep,
) -> [Tensor<B, 1>; 3] {
    let mut g = grad.cast(value.dtype()) * step.grad_scale;
    if let Some(scale) = scale {
        g = g * scale;
    }
    let m = m * step.beta1 + g.clone() * (1.0 - step.beta1);
    let v = v * step.beta2 + g.powi_scalar(2) * (1.0 - step.beta2);
    let t = step.step.min(i32::MAX as u64) as i32;
    let m_hat = m.clone() / (1.0 - step.beta1.powi(t));
    let v_hat = v.clone() / (1.0 - step.beta2.powi(t));
    let mut update = m_hat / (v_hat.sqrt() + step.epsilon);
    if step.weight_decay > 0.0 {
        update = update + value.clone() * step.weight_decay;
        let norm = |t: &Tensor<B, 1>| t.clone().powi_scalar(2).sum().sqrt();
        let (w_norm, u_norm) = (norm(&value), norm(&update));
        let both = w_norm
            .clone()
            .greater_elem(0.0)
            .bool_and(u_norm.clone().greater_elem(0.0));
        let ratio = (w_norm / u_norm).mask_fill(both.bool_not(), 1.0);
        update = update * ratio;
    }
    let next = value - update * step.lr;
    [next, m, v]
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

/// `grads` (by parameter id of `model`) with every gradient in f32: the gradients of a half
/// compute copy, for the f32 master weights and their optimizer.
pub fn f32_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: GradientsParams,
) -> GradientsParams {
    struct Cast<B> {
        grads: GradientsParams,
        backend: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Cast<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register(param.id, g.cast(DType::F32));
            }
        }
    }
    let mut cast = Cast::<B> {
        grads,
        backend: std::marker::PhantomData,
    };
    model.visit(&mut cast);
    cast.grads
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

/// The dtype of a module's first float matrix (rank-2 parameter), if it has one.
pub fn matrix_dtype<B: Backend, M: burn::module::Module<B>>(
    model: &M,
) -> Option<burn::tensor::DType> {
    struct First(Option<burn::tensor::DType>);
    impl<B: Backend> ModuleVisitor<B> for First {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0.is_none() && D == 2 {
                self.0 = Some(param.val().dtype());
            }
        }
    }
    let mut first = First(None);
    model.visit(&mut first);
    first.0
}

/// Statistics of one optimizer step, left on the device (read with the step's other values
/// once per logging window).
#[derive(Debug, Clone)]
pub struct StepStats<B: Backend> {
    /// Global gradient L2 norm before clipping (`[1]`).
    pub grad_norm: Tensor<B, 1>,
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
    ) -> (M, StepStats<B::InnerBackend>) {
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
    ) -> (M, StepStats<B::InnerBackend>) {
        let mut norm = GradNorm::<B> { grads, sum: None };
        model.visit(&mut norm);
        let device = model.devices().into_iter().next().unwrap_or_default();
        let grad_norm = norm
            .sum
            .map(|s| s.cast(DType::F32).sqrt() * grad_scale)
            .unwrap_or_else(|| Tensor::zeros([1], &device));
        // The clip factor stays on the device, as torch.nn.utils.clip_grad_norm_ computes it:
        // min(1, max / (norm + 1e-6)), no host read between backward and the update.
        let max = self.config.max_grad_norm;
        let scale = if max > 0.0 {
            Scale::Device(
                (grad_norm.clone() + 1e-6)
                    .recip()
                    .mul_scalar(max)
                    .clamp_max(1.0)
                    .mul_scalar(grad_scale),
            )
        } else {
            Scale::Host(grad_scale)
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
        self.add_params(model, GradientsParams::from_grads(grads, model));
    }

    /// Adds the gradients of one micro-batch given by parameter id (those of the half compute
    /// copy, cast to f32 by [`f32_gradients`]).
    pub fn add_params<B: AutodiffBackend>(&mut self, model: &M, grads: GradientsParams)
    where
        M: AutodiffModule<B>,
    {
        self.inner.accumulate(model, grads);
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
#[path = "optim_tests.rs"]
mod tests;
