//! Run-time backend selection among the backends compiled in.
//!
//! This is the one module that names concrete Burn backends; everything else is generic over
//! `B: Backend`. Each backend is a cargo feature of this crate: `flex` (the CPU backend, on by
//! default), `ndarray` (the other CPU backend, opt-in, kept for comparison), `wgpu` and `cuda`.
//! `flex` is the default because it measured fastest on CPU (BENCHMARKS.md has the figures).

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

/// A backend the user can ask for with `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// CPU: Burn's flex backend (gemm matmul, strided views, SIMD, rayon). `--backend cpu` or
    /// `--backend flex`.
    Cpu,
    /// CPU: Burn's ndarray backend (matrixmultiply, SIMD, rayon); opt-in feature `ndarray`.
    NdArray,
    /// wgpu: Vulkan, Metal or DX12 GPUs.
    Wgpu,
    /// NVIDIA CUDA.
    Cuda,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::NdArray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

impl FromStr for BackendKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "ndarray" => Ok(Self::NdArray),
            "wgpu" | "vulkan" | "metal" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => bail!("unknown backend '{other}' (cpu, ndarray, wgpu, cuda)"),
        }
    }
}

impl BackendKind {
    /// Whether this binary was built with the backend.
    pub fn compiled(self) -> bool {
        match self {
            Self::Cpu => cfg!(feature = "flex"),
            Self::NdArray => cfg!(feature = "ndarray"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this binary.
    pub fn all_compiled() -> Vec<Self> {
        [Self::Cpu, Self::NdArray, Self::Wgpu, Self::Cuda]
            .into_iter()
            .filter(|b| b.compiled())
            .collect()
    }

    /// Resolves `--backend`: the requested one (which must be compiled in and, for CUDA, have a
    /// driver), or by default CUDA when compiled in and a driver is present, else CPU, else wgpu.
    /// wgpu is never picked by default: on a machine without a GPU it would fall back to a
    /// software adapter, far slower than the CPU backend.
    pub fn resolve(requested: Option<&str>) -> Result<Self> {
        let Some(name) = requested.filter(|n| *n != "auto") else {
            if Self::Cuda.compiled() && cuda_driver_present() {
                return Ok(Self::Cuda);
            }
            return [Self::Cpu, Self::NdArray, Self::Wgpu]
                .into_iter()
                .find(|b| b.compiled())
                .ok_or_else(|| anyhow::anyhow!("no backend compiled in"));
        };
        let kind: Self = name.parse()?;
        if !kind.compiled() {
            let built: Vec<String> = Self::all_compiled().iter().map(|b| b.to_string()).collect();
            bail!(
                "backend '{kind}' is not compiled into this binary (compiled: {}); rebuild with `cargo build --release --features {kind}`",
                built.join(", ")
            );
        }
        if kind == Self::Cuda && !cuda_driver_present() {
            bail!(
                "backend 'cuda' was requested but no NVIDIA driver was found (no /dev/nvidiactl, no libcuda.so.1); use --backend cpu"
            );
        }
        if kind == Self::Wgpu && !wgpu_adapter_present() {
            bail!(
                "backend 'wgpu' was requested but no wgpu adapter was found (no GPU driver; without a GPU on Debian/Ubuntu: apt-get install mesa-vulkan-drivers); use --backend cpu"
            );
        }
        Ok(kind)
    }
}

/// The CPU backend compiled in, for work that must give the same numbers whatever `--backend`
/// says (the initial weights of `bench train --fixed-batch`).
#[cfg(feature = "flex")]
pub type HostBackend = burn::backend::Flex;
/// The CPU backend compiled in (see above).
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type HostBackend = burn::backend::NdArray<f32>;

/// Whether wgpu finds an adapter: one tiny tensor round trip. CubeCL panics in its device
/// thread when there is none; the panic is caught and kept off the terminal.
#[cfg(feature = "wgpu")]
fn wgpu_adapter_present() -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = std::panic::catch_unwind(|| {
        let device = burn::backend::wgpu::WgpuDevice::default();
        burn::tensor::Tensor::<burn::backend::Wgpu, 1>::zeros([1], &device)
            .into_data()
            .to_vec::<f32>()
            .is_ok()
    })
    .unwrap_or(false);
    std::panic::set_hook(hook);
    found
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_adapter_present() -> bool {
    false
}

/// Whether an NVIDIA driver is installed: the device node and the driver library. Checked before
/// touching CUDA, whose loader panics in a worker thread when the library is absent.
pub fn cuda_driver_present() -> bool {
    let node = std::path::Path::new("/dev/nvidiactl").exists()
        || std::path::Path::new("/proc/driver/nvidia/version").exists();
    node && libcuda_findable()
}

fn libcuda_findable() -> bool {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(Into::into)
        .collect();
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/nvidia/lib64",
            "/usr/local/cuda/lib64",
            "/usr/lib/wsl/lib",
            "/usr/local/nvidia/lib",
        ]
        .map(Into::into),
    );
    if dirs.iter().any(|d| d.join("libcuda.so.1").exists()) {
        return true;
    }
    std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("libcuda.so.1"))
        .unwrap_or(false)
}

/// Runs `$body` with the type alias `$B` bound to the inference backend of `$kind` and `$device`
/// to its default device.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $kind {
            #[cfg(feature = "flex")]
            $crate::backend::BackendKind::Cpu => {
                type $B = burn::backend::Flex;
                let $device = burn::backend::flex::FlexDevice;
                $body
            }
            #[cfg(feature = "ndarray")]
            $crate::backend::BackendKind::NdArray => {
                type $B = burn::backend::NdArray<f32>;
                let $device = burn::backend::ndarray::NdArrayDevice::Cpu;
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::backend::BackendKind::Wgpu => {
                type $B = burn::backend::Wgpu;
                let $device = burn::backend::wgpu::WgpuDevice::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::backend::BackendKind::Cuda => {
                type $B = burn::backend::Cuda;
                let $device = burn::backend::cuda::CudaDevice::default();
                $body
            }
            #[allow(unreachable_patterns)]
            other => anyhow::bail!("backend '{other}' is not compiled into this binary"),
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_default_without_a_gpu() {
        if !cuda_driver_present() {
            assert_eq!(
                BackendKind::resolve(None).expect("default"),
                BackendKind::Cpu
            );
        }
        assert_eq!(
            BackendKind::resolve(Some("cpu")).expect("cpu"),
            BackendKind::Cpu
        );
        assert!(BackendKind::resolve(Some("tpu")).is_err());
    }

    #[test]
    fn a_backend_not_compiled_in_is_a_one_line_error() {
        for kind in [BackendKind::Wgpu, BackendKind::Cuda] {
            if !kind.compiled() {
                let err = BackendKind::resolve(Some(&kind.to_string())).expect_err("not built");
                let msg = err.to_string();
                assert!(msg.contains("not compiled") && !msg.contains('\n'), "{msg}");
            }
        }
    }
}
