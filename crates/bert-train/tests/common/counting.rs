//! A backend that counts host reads: Burn's router backend over flex with a runner client
//! that counts every tensor read back to the host (`into_data`, `into_scalar`, …) and every
//! device sync. Any model runs on it as on any non-CPU-kernel backend (the generic ops, as a
//! GPU runs them), so a test sees how often a training step would stall a GPU's queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::Flex;
use burn::tensor::backend::{DTypeUsageSet, ExecutionError};
use burn::tensor::{DType, Shape, TensorData};
use burn_ir::{BackendIr, OperationIr, TensorId, TensorIr};
use burn_router::{
    BackendRouter, MultiBackendBridge, RouterTensor, Runner, RunnerChannel, RunnerClient,
};

/// Reads back to the host since the process started.
pub static READS: AtomicUsize = AtomicUsize::new(0);
/// Device syncs since the process started.
pub static SYNCS: AtomicUsize = AtomicUsize::new(0);

/// Host reads and syncs so far.
pub fn host_waits() -> usize {
    READS.load(Ordering::SeqCst) + SYNCS.load(Ordering::SeqCst)
}

/// The frames of this workspace's crates in the current backtrace (`BERT_DEBUG_READS=1` prints
/// them for every read: where a read comes from).
fn our_frames() -> String {
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    let frames: Vec<&str> = trace
        .lines()
        .filter_map(|l| l.trim_start().split_once(": ").map(|(_, f)| f))
        .filter(|f| f.starts_with("bert_") || f.starts_with("<bert_"))
        .take(4)
        .collect();
    frames.join(" < ")
}

/// The counting backend (wrap it in `Autodiff` to train).
pub type Counting = BackendRouter<CountingChannel>;

/// Flex's runner, counting reads and syncs.
#[derive(Clone, Debug)]
pub struct CountingClient(Runner<Flex>);

impl RunnerClient for CountingClient {
    type Device = <Flex as burn::tensor::backend::BackendTypes>::Device;

    fn register_op(&self, op: OperationIr) {
        self.0.register_op(op)
    }

    fn read_tensor_async(
        &self,
        tensor: TensorIr,
    ) -> Pin<Box<dyn Future<Output = Result<TensorData, ExecutionError>> + Send>> {
        READS.fetch_add(1, Ordering::SeqCst);
        if std::env::var_os("BERT_DEBUG_READS").is_some() {
            eprintln!("host read from {}", our_frames());
        }
        self.0.read_tensor_async(tensor)
    }

    fn sync(&self) -> Result<(), ExecutionError> {
        SYNCS.fetch_add(1, Ordering::SeqCst);
        self.0.sync()
    }

    fn create_empty_handle(&self) -> TensorId {
        self.0.create_empty_handle()
    }

    fn register_tensor_data(&self, data: TensorData) -> RouterTensor<Self> {
        let desc = self.0.register_tensor_data_desc(data);
        RouterTensor::new(desc.id, desc.shape, desc.dtype, self.clone())
    }

    fn device(&self) -> Self::Device {
        self.0.device()
    }

    fn seed(&self, seed: u64) {
        self.0.seed(seed)
    }

    fn dtype_usage(&self, dtype: DType) -> DTypeUsageSet {
        self.0.dtype_usage(dtype)
    }
}

/// One backend, so tensors never change backends.
#[derive(Clone, Debug)]
pub struct SameBackend;

impl MultiBackendBridge for SameBackend {
    type TensorHandle = <Flex as BackendIr>::Handle;
    type Device = <Flex as burn::tensor::backend::BackendTypes>::Device;

    fn change_backend_float(
        t: Self::TensorHandle,
        _: Shape,
        _: &Self::Device,
    ) -> Self::TensorHandle {
        t
    }

    fn change_backend_int(t: Self::TensorHandle, _: Shape, _: &Self::Device) -> Self::TensorHandle {
        t
    }

    fn change_backend_bool(
        t: Self::TensorHandle,
        _: Shape,
        _: &Self::Device,
    ) -> Self::TensorHandle {
        t
    }
}

/// The channel of [`Counting`]: one [`CountingClient`] per device.
#[derive(Clone, Debug)]
pub struct CountingChannel;

impl RunnerChannel for CountingChannel {
    type Device = <Flex as burn::tensor::backend::BackendTypes>::Device;
    type Bridge = SameBackend;
    type Client = CountingClient;
    type FloatElem = <Flex as burn::tensor::backend::BackendTypes>::FloatElem;
    type IntElem = <Flex as burn::tensor::backend::BackendTypes>::IntElem;
    type BoolElem = <Flex as burn::tensor::backend::BackendTypes>::BoolElem;

    fn name(_: &Self::Device) -> String {
        "counting<flex>".into()
    }

    fn init_client(device: &Self::Device) -> Self::Client {
        CountingClient(Runner::new(*device))
    }

    fn get_tensor_handle(tensor: &TensorIr, client: &Self::Client) -> <Flex as BackendIr>::Handle {
        client.0.get_tensor_handle(tensor)
    }

    fn register_tensor(
        client: &Self::Client,
        handle: <Flex as BackendIr>::Handle,
        shape: Shape,
        dtype: DType,
    ) -> RouterTensor<Self::Client> {
        client
            .0
            .register_tensor(handle, shape, dtype, client.clone())
    }
}
