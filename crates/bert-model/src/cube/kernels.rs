//! The CubeCL kernels (`#[cube]`, compiled by burn-wgpu and burn-cubecl's CUDA runtime alike)
//! and their launches on f32 `CubeTensor`s.
//!
//! Row kernels run one cube per row (a cube of [`ROW_THREADS`] threads striding over the row,
//! reductions through shared memory in a fixed order, so results do not depend on timing);
//! elementwise kernels one thread per element. Every launch makes its inputs contiguous first
//! (fusion may hand over strided views) and allocates its outputs.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Threads of a row kernel's cube (a power of two, for the tree reductions).
const ROW_THREADS: usize = 256;

/// Threads of an elementwise kernel's cube.
const ELEMENT_THREADS: u32 = 256;

/// Rows one cube of the LayerNorm parameter-gradient kernel sums (its partial sums are then
/// added by a reduction over the chunks).
const ROWS_PER_CHUNK: usize = 32;

/// The most cubes a launch puts along one grid axis (WebGPU's limit).
const MAX_GRID_AXIS: usize = 65_535;

/// The row this cube handles (rows are laid over a 2-D grid to pass the per-axis limit).
#[cube]
pub(super) fn row_index() -> usize {
    (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize
}

/// A grid of at least `rows` cubes, [`row_index`] numbering them.
pub(super) fn row_grid(rows: usize) -> CubeCount {
    let x = rows.clamp(1, MAX_GRID_AXIS);
    CubeCount::Static(x as u32, rows.div_ceil(x).max(1) as u32, 1)
}

/// The sum over the cube of each thread's `value`, in a fixed tree order (every thread gets
/// it; `shared` holds one value per thread, `CUBE_DIM_X` a power of two, and is free again on
/// return).
#[cube]
pub(super) fn block_sum(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    let tid = UNIT_POS_X as usize;
    shared[tid] = value;
    sync_cube();
    // The stride is a runtime value (a comptime one cannot be updated); `CUBE_DIM_X` is
    // `threads`.
    let mut stride = (CUBE_DIM_X / 2) as usize;
    while stride > 0 {
        if tid < stride {
            shared[tid] = shared[tid] + shared[tid + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// The maximum over the cube of each thread's `value` (as [`block_sum`]).
#[cube]
pub(super) fn block_max(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    let tid = UNIT_POS_X as usize;
    shared[tid] = value;
    sync_cube();
    // The stride is a runtime value (a comptime one cannot be updated); `CUBE_DIM_X` is
    // `threads`.
    let mut stride = (CUBE_DIM_X / 2) as usize;
    while stride > 0 {
        if tid < stride {
            shared[tid] = shared[tid].max(shared[tid + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// The LayerNorm input at `index`: `x`, plus `residual` when there is one.
#[cube]
fn ln_input(
    x: &Tensor<f32>,
    residual: &Tensor<f32>,
    index: usize,
    #[comptime] has_residual: bool,
) -> f32 {
    if has_residual {
        x[index] + residual[index]
    } else {
        x[index]
    }
}

/// `s = x (+ residual)`; `out = (s − mean) · rstd · gamma + beta` per row, with the row's
/// mean and `rstd = 1 / √(var + epsilon)` (biased variance, two passes) kept for backward.
#[cube(launch)]
fn layer_norm_forward_kernel(
    x: &Tensor<f32>,
    residual: &Tensor<f32>,
    gamma: &Tensor<f32>,
    beta: &Tensor<f32>,
    output: &mut Tensor<f32>,
    mean: &mut Tensor<f32>,
    rstd: &mut Tensor<f32>,
    epsilon: f32,
    #[comptime] has_residual: bool,
    #[comptime] threads: usize,
) {
    let row = row_index();
    if row >= mean.len() {
        terminate!();
    }
    let width = gamma.len();
    let base = row * width;
    let tid = UNIT_POS_X as usize;
    let mut shared = SharedMemory::<f32>::new(threads);
    let count = f32::cast_from(width as u32);

    let mut sum = f32::new(0.0);
    let mut i = tid;
    while i < width {
        sum += ln_input(x, residual, base + i, has_residual);
        i += threads;
    }
    let mu = block_sum(sum, &mut shared) / count;

    let mut squares = f32::new(0.0);
    let mut i = tid;
    while i < width {
        let d = ln_input(x, residual, base + i, has_residual) - mu;
        squares += d * d;
        i += threads;
    }
    let var = block_sum(squares, &mut shared) / count;
    let r = f32::new(1.0) / (var + epsilon).sqrt();

    let mut i = tid;
    while i < width {
        let xhat = (ln_input(x, residual, base + i, has_residual) - mu) * r;
        output[base + i] = xhat * gamma[i] + beta[i];
        i += threads;
    }
    if tid == 0 {
        mean[row] = mu;
        rstd[row] = r;
    }
}

/// The input gradient of LayerNorm per row: with `g = dy · gamma` and `xhat` recomputed,
/// `dx = rstd · (g − mean(g) − xhat · mean(g · xhat))` (also the residual's gradient).
#[cube(launch)]
fn layer_norm_backward_kernel(
    x: &Tensor<f32>,
    residual: &Tensor<f32>,
    gamma: &Tensor<f32>,
    mean: &Tensor<f32>,
    rstd: &Tensor<f32>,
    grad: &Tensor<f32>,
    output: &mut Tensor<f32>,
    #[comptime] has_residual: bool,
    #[comptime] threads: usize,
) {
    let row = row_index();
    if row >= mean.len() {
        terminate!();
    }
    let width = gamma.len();
    let base = row * width;
    let tid = UNIT_POS_X as usize;
    let mut shared = SharedMemory::<f32>::new(threads);
    let count = f32::cast_from(width as u32);
    let mu = mean[row];
    let r = rstd[row];

    let mut sum_g = f32::new(0.0);
    let mut sum_gx = f32::new(0.0);
    let mut i = tid;
    while i < width {
        let xhat = (ln_input(x, residual, base + i, has_residual) - mu) * r;
        let g = grad[base + i] * gamma[i];
        sum_g += g;
        sum_gx += g * xhat;
        i += threads;
    }
    let mean_g = block_sum(sum_g, &mut shared) / count;
    let mean_gx = block_sum(sum_gx, &mut shared) / count;

    let mut i = tid;
    while i < width {
        let xhat = (ln_input(x, residual, base + i, has_residual) - mu) * r;
        let g = grad[base + i] * gamma[i];
        output[base + i] = r * (g - mean_g - xhat * mean_gx);
        i += threads;
    }
}

/// Partial sums of LayerNorm's parameter gradients, one chunk of rows per cube row of the
/// grid: `dgamma[chunk, j] = Σ dy · xhat`, `dbeta[chunk, j] = Σ dy` over the chunk's rows.
#[cube(launch)]
fn layer_norm_param_grad_kernel(
    x: &Tensor<f32>,
    residual: &Tensor<f32>,
    mean: &Tensor<f32>,
    rstd: &Tensor<f32>,
    grad: &Tensor<f32>,
    dgamma: &mut Tensor<f32>,
    dbeta: &mut Tensor<f32>,
    #[comptime] rows_per_chunk: usize,
    #[comptime] has_residual: bool,
) {
    let width = dgamma.shape(1);
    let col = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    let chunk = CUBE_POS_Y as usize;
    if col >= width {
        terminate!();
    }
    let rows = mean.len();
    let start = chunk * rows_per_chunk;
    let mut end = start + rows_per_chunk;
    if end > rows {
        end = rows;
    }
    let mut sum_gamma = f32::new(0.0);
    let mut sum_beta = f32::new(0.0);
    let mut row = start;
    while row < end {
        let index = row * width + col;
        let xhat = (ln_input(x, residual, index, has_residual) - mean[row]) * rstd[row];
        let dy = grad[index];
        sum_gamma += dy * xhat;
        sum_beta += dy;
        row += 1;
    }
    dgamma[chunk * width + col] = sum_gamma;
    dbeta[chunk * width + col] = sum_beta;
}

/// Per row of `logits` `[n, classes]`: `lse = log Σ exp(logits)` (max-shifted) and the loss
/// `lse − logits[target]`. Targets are checked where they are made (labels, vocabulary
/// limits); one outside `[0, classes)` reads column 0 instead of memory it does not own.
#[cube(launch)]
fn cross_entropy_forward_kernel(
    logits: &Tensor<f32>,
    targets: &Tensor<i32>,
    loss: &mut Tensor<f32>,
    lse: &mut Tensor<f32>,
    #[comptime] threads: usize,
) {
    let row = row_index();
    if row >= loss.len() {
        terminate!();
    }
    let classes = logits.shape(1);
    let base = row * classes;
    let tid = UNIT_POS_X as usize;
    let mut shared = SharedMemory::<f32>::new(threads);

    let mut best = f32::new(-3.4028235e38);
    let mut i = tid;
    while i < classes {
        best = best.max(logits[base + i]);
        i += threads;
    }
    let top = block_max(best, &mut shared);

    let mut sum = f32::new(0.0);
    let mut i = tid;
    while i < classes {
        sum += (logits[base + i] - top).exp();
        i += threads;
    }
    let total = block_sum(sum, &mut shared);
    if tid == 0 {
        let log_sum = top + total.ln();
        let target = targets[row];
        let mut column = 0usize;
        if target >= 0 && (target as usize) < classes {
            column = target as usize;
        }
        lse[row] = log_sum;
        loss[row] = log_sum - logits[base + column];
    }
}

/// The gradient of the mean cross-entropy: `(softmax(logits) − onehot(target)) · grad / n`,
/// `grad` the `[1]` upstream gradient (read on the device).
#[cube(launch)]
fn cross_entropy_backward_kernel(
    logits: &Tensor<f32>,
    targets: &Tensor<i32>,
    lse: &Tensor<f32>,
    grad: &Tensor<f32>,
    output: &mut Tensor<f32>,
) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let classes = logits.shape(1);
    let row = ABSOLUTE_POS / classes;
    let column = ABSOLUTE_POS % classes;
    let scale = grad[0] / f32::cast_from(lse.len() as u32);
    let mut value = (logits[ABSOLUTE_POS] - lse[row]).exp();
    let target = targets[row];
    if target >= 0 && (target as usize) == column {
        value -= f32::new(1.0);
    }
    output[ABSOLUTE_POS] = value * scale;
}

/// `0.5 · u · (1 + erf(u / √2))`, exact GELU.
#[cube]
fn gelu(u: f32) -> f32 {
    u * f32::new(0.5) * (f32::new(1.0) + Erf::erf(u * f32::new(std::f32::consts::FRAC_1_SQRT_2)))
}

/// GELU's derivative: `0.5 · (1 + erf(u / √2)) + u · exp(−u² / 2) / √(2π)`.
#[cube]
fn gelu_derivative(u: f32) -> f32 {
    let cdf =
        f32::new(0.5) * (f32::new(1.0) + Erf::erf(u * f32::new(std::f32::consts::FRAC_1_SQRT_2)));
    let pdf = (u * u * f32::new(-0.5)).exp() * f32::new(0.398_942_3);
    cdf + u * pdf
}

/// `gelu(z + bias)`, `bias` broadcast over the rows of `z` `[rows, width]`.
#[cube(launch)]
fn bias_gelu_forward_kernel(z: &Tensor<f32>, bias: &Tensor<f32>, output: &mut Tensor<f32>) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let u = z[ABSOLUTE_POS] + bias[ABSOLUTE_POS % bias.len()];
    output[ABSOLUTE_POS] = gelu(u);
}

/// `dy · gelu'(z + bias)`.
#[cube(launch)]
fn bias_gelu_backward_kernel(
    z: &Tensor<f32>,
    bias: &Tensor<f32>,
    grad: &Tensor<f32>,
    output: &mut Tensor<f32>,
) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let u = z[ABSOLUTE_POS] + bias[ABSOLUTE_POS % bias.len()];
    output[ABSOLUTE_POS] = grad[ABSOLUTE_POS] * gelu_derivative(u);
}

/// The scalars of one AdamW step of one parameter tensor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamWScalars {
    /// What the gradient is multiplied by first (gradient averaging, a host-side clip).
    pub(crate) grad_scale: f32,
    pub(crate) beta1: f32,
    pub(crate) beta2: f32,
    pub(crate) lr: f32,
    pub(crate) epsilon: f32,
    /// `1 − beta1^t`.
    pub(crate) bias1: f32,
    /// `1 − beta2^t`.
    pub(crate) bias2: f32,
    /// `lr · weight_decay` for a decaying parameter, else 0.
    pub(crate) decay: f32,
}

/// One AdamW step of a flattened parameter (torch.optim.AdamW's order of operations): the
/// gradient scaled by `grad_scale` (and by `scale[0]` when `device_scale`), the moments
/// updated, the bias-corrected step taken and `decay · value` (decoupled, on the old value)
/// subtracted.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel(
    value: &Tensor<f32>,
    grad: &Tensor<f32>,
    m: &Tensor<f32>,
    v: &Tensor<f32>,
    scale: &Tensor<f32>,
    next: &mut Tensor<f32>,
    m_out: &mut Tensor<f32>,
    v_out: &mut Tensor<f32>,
    grad_scale: f32,
    beta1: f32,
    beta2: f32,
    lr: f32,
    epsilon: f32,
    bias1: f32,
    bias2: f32,
    decay: f32,
    #[comptime] device_scale: bool,
) {
    if ABSOLUTE_POS >= next.len() {
        terminate!();
    }
    let mut g = grad[ABSOLUTE_POS] * grad_scale;
    if device_scale {
        g *= scale[0];
    }
    let m_new = m[ABSOLUTE_POS] * beta1 + g * (f32::new(1.0) - beta1);
    let v_new = v[ABSOLUTE_POS] * beta2 + g * g * (f32::new(1.0) - beta2);
    let m_hat = m_new / bias1;
    let v_hat = v_new / bias2;
    let x = value[ABSOLUTE_POS];
    next[ABSOLUTE_POS] = x - m_hat / (v_hat.sqrt() + epsilon) * lr - x * decay;
    m_out[ABSOLUTE_POS] = m_new;
    v_out[ABSOLUTE_POS] = v_new;
}

/// An f32 tensor of `shape` on `like`'s device, uninitialised.
pub(super) fn empty_like<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_dtype::<R>(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// The grid and cube of an elementwise launch over `out`'s elements.
fn elementwise<R: CubeRuntime>(out: &CubeTensor<R>) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(ELEMENT_THREADS);
    let count = calculate_cube_count_elemwise(&out.client, out.meta.num_elements(), dim);
    (count, dim)
}

/// How many chunks of rows [`layer_norm_backward`]'s parameter-gradient partials have.
pub(crate) fn param_grad_chunks(rows: usize) -> usize {
    rows.div_ceil(ROWS_PER_CHUNK).max(1)
}

/// Rows of width `width` in `x`.
fn rows_of<R: CubeRuntime>(x: &CubeTensor<R>, width: usize) -> usize {
    x.meta.num_elements() / width.max(1)
}

/// LayerNorm forward over rows of `x` (`[rows, width]` as a whole, any rank), with
/// `residual` added first: `(out, mean [rows], rstd [rows])`.
pub(crate) fn layer_norm_forward<R: CubeRuntime>(
    x: CubeTensor<R>,
    residual: Option<CubeTensor<R>>,
    gamma: CubeTensor<R>,
    beta: CubeTensor<R>,
    epsilon: f32,
) -> [CubeTensor<R>; 3] {
    let x = into_contiguous(x);
    let has_residual = residual.is_some();
    let residual = residual.map(into_contiguous).unwrap_or_else(|| x.clone());
    let (gamma, beta) = (into_contiguous(gamma), into_contiguous(beta));
    let width = gamma.meta.num_elements();
    let rows = rows_of(&x, width);
    let out = empty_like(&x, x.meta.shape().clone());
    let mean = empty_like(&x, Shape::new([rows]));
    let rstd = empty_like(&x, Shape::new([rows]));
    let client = x.client.clone();
    layer_norm_forward_kernel::launch::<R>(
        &client,
        row_grid(rows),
        CubeDim::new_1d(ROW_THREADS as u32),
        x.into_tensor_arg(),
        residual.into_tensor_arg(),
        gamma.into_tensor_arg(),
        beta.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        epsilon,
        has_residual,
        ROW_THREADS,
    );
    [out, mean, rstd]
}

/// LayerNorm backward: `(dx, dgamma partials [chunks, width], dbeta partials [chunks, width])`
/// (the partials summed over their first dimension are the parameter gradients).
pub(crate) fn layer_norm_backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    residual: Option<CubeTensor<R>>,
    gamma: CubeTensor<R>,
    mean: CubeTensor<R>,
    rstd: CubeTensor<R>,
    grad: CubeTensor<R>,
) -> [CubeTensor<R>; 3] {
    let x = into_contiguous(x);
    let has_residual = residual.is_some();
    let residual = residual.map(into_contiguous).unwrap_or_else(|| x.clone());
    let gamma = into_contiguous(gamma);
    let grad = into_contiguous(grad);
    let width = gamma.meta.num_elements();
    let rows = rows_of(&x, width);
    let chunks = param_grad_chunks(rows);
    let dx = empty_like(&x, x.meta.shape().clone());
    let dgamma = empty_like(&x, Shape::new([chunks, width]));
    let dbeta = empty_like(&x, Shape::new([chunks, width]));
    let client = x.client.clone();
    layer_norm_backward_kernel::launch::<R>(
        &client,
        row_grid(rows),
        CubeDim::new_1d(ROW_THREADS as u32),
        x.clone().into_tensor_arg(),
        residual.clone().into_tensor_arg(),
        gamma.into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        has_residual,
        ROW_THREADS,
    );
    layer_norm_param_grad_kernel::launch::<R>(
        &client,
        CubeCount::Static(
            width.div_ceil(ELEMENT_THREADS as usize) as u32,
            chunks as u32,
            1,
        ),
        CubeDim::new_1d(ELEMENT_THREADS),
        x.into_tensor_arg(),
        residual.into_tensor_arg(),
        mean.into_tensor_arg(),
        rstd.into_tensor_arg(),
        grad.into_tensor_arg(),
        dgamma.clone().into_tensor_arg(),
        dbeta.clone().into_tensor_arg(),
        ROWS_PER_CHUNK,
        has_residual,
    );
    [dx, dgamma, dbeta]
}

/// Cross-entropy forward over rows of `logits` `[n, classes]`: `(loss [n], lse [n])`.
pub(crate) fn cross_entropy_forward<R: CubeRuntime>(
    logits: CubeTensor<R>,
    targets: CubeTensor<R>,
) -> [CubeTensor<R>; 2] {
    let logits = into_contiguous(logits);
    let targets = into_contiguous(targets);
    let rows = logits.meta.shape()[0];
    let loss = empty_like(&logits, Shape::new([rows]));
    let lse = empty_like(&logits, Shape::new([rows]));
    let client = logits.client.clone();
    cross_entropy_forward_kernel::launch::<R>(
        &client,
        row_grid(rows),
        CubeDim::new_1d(ROW_THREADS as u32),
        logits.into_tensor_arg(),
        targets.into_tensor_arg(),
        loss.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        ROW_THREADS,
    );
    [loss, lse]
}

/// The gradient of the mean cross-entropy with respect to `logits`.
pub(crate) fn cross_entropy_backward<R: CubeRuntime>(
    logits: CubeTensor<R>,
    targets: CubeTensor<R>,
    lse: CubeTensor<R>,
    grad: CubeTensor<R>,
) -> CubeTensor<R> {
    let logits = into_contiguous(logits);
    let targets = into_contiguous(targets);
    let out = empty_like(&logits, logits.meta.shape().clone());
    let client = logits.client.clone();
    let (count, dim) = elementwise(&out);
    cross_entropy_backward_kernel::launch::<R>(
        &client,
        count,
        dim,
        logits.into_tensor_arg(),
        targets.into_tensor_arg(),
        lse.into_tensor_arg(),
        into_contiguous(grad).into_tensor_arg(),
        out.clone().into_tensor_arg(),
    );
    out
}

/// `gelu(z + bias)`.
pub(crate) fn bias_gelu_forward<R: CubeRuntime>(
    z: CubeTensor<R>,
    bias: CubeTensor<R>,
) -> CubeTensor<R> {
    let z = into_contiguous(z);
    let out = empty_like(&z, z.meta.shape().clone());
    let client = z.client.clone();
    let (count, dim) = elementwise(&out);
    bias_gelu_forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        z.into_tensor_arg(),
        into_contiguous(bias).into_tensor_arg(),
        out.clone().into_tensor_arg(),
    );
    out
}

/// `dy · gelu'(z + bias)`.
pub(crate) fn bias_gelu_backward<R: CubeRuntime>(
    z: CubeTensor<R>,
    bias: CubeTensor<R>,
    grad: CubeTensor<R>,
) -> CubeTensor<R> {
    let z = into_contiguous(z);
    let out = empty_like(&z, z.meta.shape().clone());
    let client = z.client.clone();
    let (count, dim) = elementwise(&out);
    bias_gelu_backward_kernel::launch::<R>(
        &client,
        count,
        dim,
        z.into_tensor_arg(),
        into_contiguous(bias).into_tensor_arg(),
        into_contiguous(grad).into_tensor_arg(),
        out.clone().into_tensor_arg(),
    );
    out
}

/// One AdamW step of a flattened parameter: `(next, m, v)`, `scale` a `[1]` device factor
/// on the gradient when given.
pub(crate) fn adamw<R: CubeRuntime>(
    value: CubeTensor<R>,
    grad: CubeTensor<R>,
    m: CubeTensor<R>,
    v: CubeTensor<R>,
    scale: Option<CubeTensor<R>>,
    step: AdamWScalars,
) -> [CubeTensor<R>; 3] {
    let value = into_contiguous(value);
    let shape = value.meta.shape().clone();
    let next = empty_like(&value, shape.clone());
    let m_out = empty_like(&value, shape.clone());
    let v_out = empty_like(&value, shape);
    let device_scale = scale.is_some();
    let scale = scale.map(into_contiguous).unwrap_or_else(|| value.clone());
    let client = value.client.clone();
    let (count, dim) = elementwise(&next);
    adamw_kernel::launch::<R>(
        &client,
        count,
        dim,
        value.into_tensor_arg(),
        into_contiguous(grad).into_tensor_arg(),
        into_contiguous(m).into_tensor_arg(),
        into_contiguous(v).into_tensor_arg(),
        scale.into_tensor_arg(),
        next.clone().into_tensor_arg(),
        m_out.clone().into_tensor_arg(),
        v_out.clone().into_tensor_arg(),
        step.grad_scale,
        step.beta1,
        step.beta2,
        step.lr,
        step.epsilon,
        step.bias1,
        step.bias2,
        step.decay,
        device_scale,
    );
    [next, m_out, v_out]
}
