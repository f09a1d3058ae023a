//! Backend choice at run time: `auto`, `cuda` (burn's CUDA backend), `cpu` (burn's Flex) or `tch`
//! (burn's LibTorch backend, with the `tch` build feature). Training runs on an autodiff backend
//! ([`BackendTask`], [`dispatch_with`]), inference on the plain one beneath it ([`InferTask`],
//! [`dispatch_infer`]).
//!
//! `auto` takes the first of these that this build has and this machine runs: LibTorch on a GPU,
//! burn's CUDA, LibTorch on the CPU, Flex. On the CPU the order is measured (LibTorch trains the seed
//! model 1.8–2.2× as fast as Flex, BENCHMARKS.md); on a GPU it follows what is known so far (burn-cuda 0.21
//! spends minutes compiling kernels before its first step, docs/gpu.md), not a measurement.

use anyhow::Result;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
pub use clip_train::config::BackendChoice;

/// Parses `--backend auto|cuda|cpu|tch`.
pub fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("unknown backend {s:?} (auto, cuda, cpu or tch)"))
}

/// The backend a choice comes to on this build and machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    Flex,
    Cuda,
    Tch,
}

/// Resolves `choice`; for `auto`, says which backend it picked and why.
fn resolve(choice: BackendChoice) -> Resolved {
    match choice {
        BackendChoice::Cpu => Resolved::Flex,
        BackendChoice::Cuda => Resolved::Cuda,
        BackendChoice::Tch => Resolved::Tch,
        BackendChoice::Auto => {
            let (picked, why) = if tch::compiled() && tch::on_gpu() {
                (Resolved::Tch, "LibTorch with a CUDA device")
            } else if cuda::available() {
                (Resolved::Cuda, "a CUDA device answered")
            } else if tch::compiled() {
                (Resolved::Tch, "no GPU; LibTorch's CPU kernels are faster than Flex's")
            } else {
                (Resolved::Flex, "no CUDA device answered and this build has no LibTorch")
            };
            eprintln!("backend: auto picked {} ({why})", name(picked));
            picked
        }
    }
}

fn name(backend: Resolved) -> &'static str {
    match backend {
        Resolved::Flex => "cpu (flex)",
        Resolved::Cuda => "cuda",
        Resolved::Tch => tch::name(),
    }
}

/// Work that runs on whichever autodiff backend was chosen.
pub trait BackendTask {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device, backend_name: &str)
        -> Result<Self::Output>;
}

/// Inference work: runs on whichever plain (non-autodiff) backend was chosen.
pub trait InferTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device, backend_name: &str) -> Result<Self::Output>;
}

/// Runs the inference `task` on the chosen backend, saying which one it picked when the choice
/// was `auto`.
pub fn dispatch_infer<T: InferTask>(choice: BackendChoice, task: T) -> Result<T::Output> {
    match resolve(choice) {
        Resolved::Flex => task.run::<Flex>(Default::default(), name(Resolved::Flex)),
        Resolved::Cuda => cuda::run_infer(task),
        Resolved::Tch => tch::run_infer(task),
    }
}

/// Runs the training `task` on the chosen autodiff backend (saying which one it picked when the
/// choice was `auto`), with activation recomputation when `recompute` is set: the autodiff graph
/// keeps the outputs of compute-bound operations (convolutions, matmuls) and recomputes the
/// memory-bound ones (activations, normalization arithmetic) during the backward pass
/// (burn's `BalancedCheckpointing`).
pub fn dispatch_with<T: BackendTask>(
    choice: BackendChoice,
    recompute: bool,
    task: T,
) -> Result<T::Output> {
    match (resolve(choice), recompute) {
        (Resolved::Cuda, _) => cuda::run(task, recompute),
        (Resolved::Tch, _) => tch::run(task, recompute),
        (Resolved::Flex, false) => task.run::<Autodiff<Flex>>(Default::default(), "cpu (flex)"),
        (Resolved::Flex, true) => {
            task.run::<Autodiff<Flex, BalancedCheckpointing>>(Default::default(), "cpu (flex)")
        }
    }
}

#[cfg(feature = "tch")]
mod tch {
    use super::*;
    use burn_tch::{LibTorch, LibTorchDevice};

    pub fn compiled() -> bool {
        true
    }

    /// Whether LibTorch has CUDA and a device answers (a LibTorch for the CPU says no).
    pub fn on_gpu() -> bool {
        ::tch::Cuda::is_available()
    }

    fn device() -> LibTorchDevice {
        if on_gpu() {
            // Fixed image shapes: let cuDNN time its convolution algorithms once and keep the
            // fastest, as the PyTorch reference does.
            ::tch::Cuda::cudnn_set_benchmark(true);
            LibTorchDevice::Cuda(0)
        } else {
            LibTorchDevice::Cpu
        }
    }

    pub fn name() -> &'static str {
        if on_gpu() {
            "tch (libtorch cuda)"
        } else {
            "tch (libtorch cpu)"
        }
    }

    pub fn run_infer<T: InferTask>(task: T) -> Result<T::Output> {
        task.run::<LibTorch>(device(), name())
    }

    pub fn run<T: BackendTask>(task: T, recompute: bool) -> Result<T::Output> {
        if recompute {
            task.run::<Autodiff<LibTorch, BalancedCheckpointing>>(device(), name())
        } else {
            task.run::<Autodiff<LibTorch>>(device(), name())
        }
    }
}

#[cfg(not(feature = "tch"))]
mod tch {
    use super::*;

    pub fn compiled() -> bool {
        false
    }

    pub fn on_gpu() -> bool {
        false
    }

    pub fn name() -> &'static str {
        "tch (not in this build)"
    }

    fn missing() -> anyhow::Error {
        anyhow::anyhow!(
            "this `clip` was built without the `tch` feature (LibTorch): build it with `cargo xtask \
             libtorch` then `--features tch` (docs/building.md), or use `--backend cpu`"
        )
    }

    pub fn run_infer<T: InferTask>(_task: T) -> Result<T::Output> {
        Err(missing())
    }

    pub fn run<T: BackendTask>(_task: T, _recompute: bool) -> Result<T::Output> {
        Err(missing())
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use burn::backend::cuda::CudaDevice;
    use burn::backend::Cuda;
    use burn::tensor::Tensor;

    /// Whether a CUDA device answers: creating a tensor panics inside cubecl when no driver or
    /// device is there, so the probe runs on its own thread with the panic caught and silenced.
    pub fn available() -> bool {
        static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *PROBE.get_or_init(|| {
            crate::kernels::prepare_cuda();
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let ok = std::thread::spawn(|| {
                std::panic::catch_unwind(|| {
                    let t = Tensor::<Cuda, 1>::ones([4], &CudaDevice::default());
                    t.sum().into_scalar() == 4.0
                })
                .unwrap_or(false)
            })
            .join()
            .unwrap_or(false);
            std::panic::set_hook(hook);
            ok
        })
    }

    fn ensure_available() -> Result<()> {
        anyhow::ensure!(
            available(),
            "backend `cuda` was asked for but no CUDA device answered (no NVIDIA driver, no GPU, or \
             libcuda not on the library path); use `--backend cpu` or `auto`"
        );
        Ok(())
    }

    pub fn run_infer<T: InferTask>(task: T) -> Result<T::Output> {
        ensure_available()?;
        task.run::<Cuda>(CudaDevice::default(), "cuda")
    }

    pub fn run<T: BackendTask>(task: T, recompute: bool) -> Result<T::Output> {
        ensure_available()?;
        if recompute {
            task.run::<Autodiff<Cuda, BalancedCheckpointing>>(CudaDevice::default(), "cuda")
        } else {
            task.run::<Autodiff<Cuda>>(CudaDevice::default(), "cuda")
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::*;

    pub fn available() -> bool {
        false
    }

    pub fn run<T: BackendTask>(_task: T, _recompute: bool) -> Result<T::Output> {
        anyhow::bail!("this `clip` was built without the `cuda` feature; use `--backend cpu`")
    }

    pub fn run_infer<T: InferTask>(_task: T) -> Result<T::Output> {
        anyhow::bail!("this `clip` was built without the `cuda` feature; use `--backend cpu`")
    }
}
