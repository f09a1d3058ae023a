//! Backend choice at run time: `auto` (CUDA when a device answers, else the CPU), `cuda`, `cpu`.
//! Training runs on an autodiff backend ([`BackendTask`], [`dispatch_with`]), inference on the
//! plain one beneath it ([`InferTask`], [`dispatch_infer`]): Flex on the CPU, Cuda on a GPU.

use anyhow::Result;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
pub use clip_train::config::BackendChoice;

/// Parses `--backend auto|cuda|cpu`.
pub fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("unknown backend {s:?} (auto, cuda or cpu)"))
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
    if use_cuda(choice) {
        cuda::run_infer(task)
    } else {
        task.run::<Flex>(Default::default(), "cpu (flex)")
    }
}

/// Whether the choice means CUDA; for `auto`, says which backend it picked.
fn use_cuda(choice: BackendChoice) -> bool {
    match choice {
        BackendChoice::Cpu => false,
        BackendChoice::Cuda => true,
        BackendChoice::Auto => {
            let found = cuda::available();
            if found {
                eprintln!("backend: auto picked cuda");
            } else {
                eprintln!("backend: auto picked cpu (flex): no CUDA device answered");
            }
            found
        }
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
    match (use_cuda(choice), recompute) {
        (true, _) => cuda::run(task, recompute),
        (false, false) => task.run::<Autodiff<Flex>>(Default::default(), "cpu (flex)"),
        (false, true) => {
            task.run::<Autodiff<Flex, BalancedCheckpointing>>(Default::default(), "cpu (flex)")
        }
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
