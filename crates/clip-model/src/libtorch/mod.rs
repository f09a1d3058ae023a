//! LibTorch's own kernels for training on burn's LibTorch backend (`tch` feature).
//!
//! burn-tch 0.21 runs each op forward with LibTorch but leaves several backward passes to burn's
//! generic decompositions: a convolution's is a transposed convolution plus a convolution over
//! swapped batch and channel axes, batch norm is a dozen element-wise tensors, ReLU's a comparison
//! and a masked fill. On the CPU that is what kept `--backend tch` below PyTorch (BENCHMARKS.md).
//! Here each of the three is recorded as its own autodiff operation whose forward and backward are
//! the ATen kernels PyTorch's autograd calls (oneDNN on the CPU, cuDNN on CUDA):
//! `at::convolution_backward` and `at::native_batch_norm_backward` through
//! `native/libtorch_ops.cpp`, `threshold_backward` through tch. On every other backend the callers
//! keep burn's ops, unchanged.

mod batch_norm;
mod conv;
mod relu;

use std::any::{Any, TypeId};
use std::ffi::{c_char, CStr};

use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn_tch::LibTorch;
use tch::Tensor as AtTensor;
use torch_sys::C_tensor;

pub use batch_norm::{batch_norm_training, BatchStatistics};
pub use conv::conv2d;
pub use relu::relu;

/// Which training backend on LibTorch `B` is, if any: the ops here are recorded per checkpoint
/// strategy.
enum OnLibTorch {
    Plain,
    Recomputed,
    Elsewhere,
}

fn on_libtorch<B: Backend>() -> OnLibTorch {
    if is::<B, Autodiff<LibTorch, NoCheckpointing>>() {
        OnLibTorch::Plain
    } else if is::<B, Autodiff<LibTorch, BalancedCheckpointing>>() {
        OnLibTorch::Recomputed
    } else {
        OnLibTorch::Elsewhere
    }
}

/// Whether `B` trains on LibTorch, so that this module's ops take LibTorch's kernels.
pub fn trains_on_libtorch<B: Backend>() -> bool {
    !matches!(on_libtorch::<B>(), OnLibTorch::Elsewhere)
}

fn is<A: 'static, B: 'static>() -> bool {
    TypeId::of::<A>() == TypeId::of::<B>()
}

/// Moves a value between two names of the same type (checked by the caller with [`on_libtorch`]).
fn cast<From: 'static, To: 'static>(value: From) -> To {
    let boxed: Box<dyn Any> = Box::new(value);
    *boxed.downcast::<To>().expect("cast between the same type")
}

extern "C" {
    fn clip_libtorch_free_message(message: *mut c_char);
}

/// Turns a shim's result into tensors: a non-null message is LibTorch's error, which ends the
/// backward pass with that message, as every other LibTorch error in burn-tch does; non-null
/// handles become owned tensors.
fn take_results<const N: usize>(
    what: &str,
    message: *mut c_char,
    handles: [*mut C_tensor; N],
) -> [Option<AtTensor>; N] {
    if !message.is_null() {
        // SAFETY: a NUL-terminated string the shim allocated and hands over.
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
        unsafe { clip_libtorch_free_message(message) };
        panic!("LibTorch's {what} failed: {text}");
    }
    // SAFETY: non-null outputs are new handles whose ownership passes to the `Tensor`s.
    handles.map(|ptr| (!ptr.is_null()).then(|| unsafe { AtTensor::from_ptr(ptr) }))
}
