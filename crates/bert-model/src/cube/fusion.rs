//! Running a kernel inside Burn's fusion stream.
//!
//! The GPU backends (`burn::backend::Wgpu`, `burn::backend::Cuda` with Burn's `fusion`
//! feature) are `Fusion<CubeBackend<…>>`: tensor ops are queued as an IR, fused into
//! generated kernels and run later. A kernel of ours joins that queue as a custom operation
//! (`OperationIr::Custom`): its inputs and outputs are declared, so fusion orders it after the
//! ops that make its inputs and before those that read its outputs, and when the stream runs
//! it hands the operation the inputs' `CubeTensor`s and takes the outputs'.

use std::marker::PhantomData;

use burn::tensor::{DType, Shape};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr, TensorStatus};

/// The unfused CubeCL backend under fusion, f32 floats and i32 ints (what Burn's `Wgpu` and
/// `Cuda` are by default).
pub(crate) type Inner<R, BT> = CubeBackend<R, f32, i32, BT>;

/// Burn's fused CubeCL backend: `burn::backend::Wgpu` is `FusedCube<WgpuRuntime, u32>`,
/// `burn::backend::Cuda` is `FusedCube<CudaRuntime, u8>`.
pub(crate) type FusedCube<R, BT> = Fusion<Inner<R, BT>>;

/// A tensor of [`FusedCube`].
pub(crate) type FusedTensor<R> = FusionTensor<FusionCubeRuntime<R>>;

thread_local! {
    /// Kernels this thread has queued (tests check that `crate::ops` chooses them).
    static QUEUED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many kernels this thread has queued so far.
#[cfg(test)]
pub(crate) fn queued() -> u64 {
    QUEUED.with(|q| q.get())
}

type Run<R> = Box<dyn Fn(Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> + Send + Sync>;

/// A queued kernel: its IR (inputs and outputs) and the launch to run.
struct KernelOp<R: CubeRuntime, BT> {
    desc: CustomOpIr,
    run: Run<R>,
    _bool: PhantomData<fn() -> BT>,
}

impl<R: CubeRuntime, BT> std::fmt::Debug for KernelOp<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KernelOp({})", self.desc.id)
    }
}

impl<R: CubeRuntime, BT: BoolElement> Operation<FusionCubeRuntime<R>> for KernelOp<R, BT> {
    fn execute(
        &self,
        handles: &mut HandleContainer<
            <FusionCubeRuntime<R> as burn_fusion::FusionRuntime>::FusionHandle,
        >,
    ) {
        let inputs = self
            .desc
            .inputs
            .iter()
            .map(|t| handles.get_float_tensor::<Inner<R, BT>>(t))
            .collect();
        let outputs = (self.run)(inputs);
        assert_eq!(
            outputs.len(),
            self.desc.outputs.len(),
            "kernel {} returned the wrong number of outputs",
            self.desc.id
        );
        for (ir, tensor) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<Inner<R, BT>>(&ir.id, tensor);
        }
    }
}

/// Queues `run` as operation `id` on the stream of `inputs` (float or int tensors, at least
/// one): `run` gets their `CubeTensor`s in order and returns one per entry of `outputs`
/// (shape, dtype), which come back as fusion tensors.
pub(crate) fn queue<R: CubeRuntime, BT: BoolElement>(
    id: &'static str,
    inputs: Vec<FusedTensor<R>>,
    outputs: &[(Shape, DType)],
    run: impl Fn(Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> + Send + Sync + 'static,
) -> Vec<FusedTensor<R>> {
    QUEUED.with(|q| q.set(q.get() + 1));
    let client = inputs
        .first()
        .expect("a kernel has at least one input")
        .client
        .clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outputs = outputs
        .iter()
        .map(|(shape, dtype)| TensorIr {
            id: client.create_empty_handle(),
            shape: shape.clone(),
            status: TensorStatus::NotInit,
            dtype: *dtype,
        })
        .collect();
    let desc = CustomOpIr {
        id: id.to_owned(),
        inputs: inputs.into_iter().map(FusionTensor::into_ir).collect(),
        outputs,
    };
    let op = KernelOp::<R, BT> {
        desc: desc.clone(),
        run: Box::new(run),
        _bool: PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), op)
}
