//! Device memory of the GPU backends (wgpu, CUDA), as CubeCL's memory manager reports it: what
//! its pools have reserved on the device and what live tensors use. `None` on the CPU
//! backends (their memory is the process's, `VmHWM`).

use std::any::Any;

/// Memory on one device, in MiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceMemory {
    /// Reserved by CubeCL's pools (what the device has given the process; pools keep their
    /// pages, so sampled after each step it is the run's high-water mark).
    pub reserved_mib: f64,
    /// Used by live allocations.
    pub in_use_mib: f64,
}

/// The memory of `device` when it is a wgpu or CUDA device (of a build with that backend).
pub fn of<D: Any>(device: &D) -> Option<DeviceMemory> {
    let device = device as &dyn Any;
    #[cfg(feature = "wgpu")]
    if let Some(d) = device.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        return usage::<cubecl::wgpu::WgpuRuntime>(d);
    }
    #[cfg(feature = "cuda")]
    if let Some(d) = device.downcast_ref::<burn::backend::cuda::CudaDevice>() {
        return usage::<cubecl::cuda::CudaRuntime>(d);
    }
    let _ = device;
    None
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn usage<R: cubecl::Runtime>(device: &R::Device) -> Option<DeviceMemory> {
    const MIB: f64 = 1024.0 * 1024.0;
    let usage = R::client(device).memory_usage().ok()?;
    Some(DeviceMemory {
        reserved_mib: usage.bytes_reserved as f64 / MIB,
        in_use_mib: usage.bytes_in_use as f64 / MIB,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_has_no_device_memory() {
        let cpu: burn::tensor::Device<burn::backend::Flex> = Default::default();
        assert_eq!(of(&cpu), None);
    }
}
