//! `clip bench step`: the model's forward and training-step throughput on synthetic batches,
//! the Rust side of the comparisons in BENCHMARKS.md (peers: `crates/clip-model/benches/*.py`).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor};
use clap::Args;
use clip_model::conv::pointwise_as_matmul;
use clip_model::{ClipConfig, Precision};
use clip_train::config::TrainSpec;
use clip_train::optim::{ClipOptimizer, GroupGrads};
use clip_train::step::{forward_backward, StepInputs};
use clip_train::ExperimentConfig;
use serde_json::{json, Value};

use crate::backend::{dispatch_with, BackendChoice, BackendTask};
use crate::kernels::{self, Heartbeat};

#[derive(Args, Debug, Clone)]
pub struct StepArgs {
    /// auto, cuda, cpu or tch.
    #[arg(long, value_parser = crate::backend::parse_backend, default_value = "auto")]
    pub backend: BackendChoice,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Caption length in tokens.
    #[arg(long, default_value_t = 32)]
    pub seq: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// fp32, bf16-mixed or fp16-mixed.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// `train` (forward + backward + the trainer's optimizer step: the seed's Adam, lr 1e-4,
    /// coupled decay 5e-4 on every parameter, fp16 loss scaling under fp16-mixed), `forward`
    /// (no grad, eval mode) or `both`.
    #[arg(long, default_value = "both")]
    pub mode: String,
    /// While the first step runs, say every this many seconds how many kernels have been
    /// compiled so far (0: never).
    #[arg(long, default_value_t = 10)]
    pub heartbeat: u64,
    /// Evaluate 1×1 convolutions as the backend's convolution instead of a matmul (A/B runs;
    /// training on LibTorch they are convolutions either way).
    #[arg(long)]
    pub pointwise_conv: bool,
    /// Split the training step into this many micro-batches (`train.micro_batches`: the whole
    /// batch's loss with features cached, one micro-batch's activations).
    #[arg(long, default_value_t = 1)]
    pub micro_batches: usize,
    /// Recompute memory-bound activations in the backward pass instead of keeping them
    /// (`train.recompute_activations`).
    #[arg(long)]
    pub recompute: bool,
}

pub fn step(args: StepArgs) -> Result<()> {
    dispatch_with(args.backend, args.recompute, args)
}

impl BackendTask for StepArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: &str) -> Result<()> {
        let precision: Precision = serde_json::from_value(serde_json::Value::String(
            self.precision.clone(),
        ))
        .map_err(|_| anyhow::anyhow!("--precision must be fp32, bf16-mixed or fp16-mixed"))?;
        if backend == "cuda" {
            eprintln!("kernel cache: {}", kernels::prepare_cuda());
        }
        B::seed(&device, 0);
        let mut config = ClipConfig::seed();
        config.image.pointwise_matmul = !self.pointwise_conv;
        let model = config.init::<B>(&device).with_precision(precision);
        let (b, s, l) = (self.batch, self.image_size, self.seq);
        let images = Tensor::<B, 4>::random([b, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
        let ids =
            Tensor::<B, 2, Int>::random([b, l], Distribution::Uniform(1000.0, 30000.0), &device);
        let mask = Tensor::<B, 2, Int>::ones([b, l], &device);
        // The arithmetic each measurement stands for (clip_model::flops): achieved TFLOP/s.
        let flops = clip_model::flops::forward_flops(&config, b, s, l);
        let tflops = |work: f64, seconds: f64| (work / seconds / 1e9).round() / 1e3;
        let common = json!({
            "backend": backend, "precision": self.precision, "batch": b, "image": s, "seq": l,
            "conv1x1": if pointwise_as_matmul::<B>(!self.pointwise_conv) { "matmul" } else { "conv" },
            "micro_batches": self.micro_batches,
            "recompute": self.recompute,
        });

        if self.mode == "train" || self.mode == "both" {
            // The optimizer step the trainer takes (per-group Adam, decay, fp16 loss scaling,
            // temperature clamp), configured as the seed notebook's.
            let mut optim = ClipOptimizer::<B>::new(&bench_spec(precision)?);
            let mut model = model.clone();
            let micro = self.micro_batches;
            let inputs = StepInputs::tokens(images.clone(), ids.clone(), mask.clone());
            let mut one_step = |model: clip_model::ClipModel<B>, phases: &mut [f64; 3]| {
                let loss_factor = optim.scaler.factor();
                if micro > 1 {
                    // Forward and backward passes interleave: phase 0 holds both.
                    let t = Instant::now();
                    let out = forward_backward(&model, &inputs, micro, loss_factor, &mut |_| {});
                    B::sync(&device).ok();
                    phases[0] = t.elapsed().as_secs_f64();
                    phases[1] = 0.0;
                    let t = Instant::now();
                    let (model, _) = optim.step(model, out.grads, 1.0);
                    B::sync(&device).ok();
                    phases[2] = t.elapsed().as_secs_f64();
                    return model;
                }
                let t = Instant::now();
                let out = model.forward(images.clone(), ids.clone(), mask.clone());
                B::sync(&device).ok();
                phases[0] = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let grads = out.loss.mul_scalar(loss_factor).backward();
                B::sync(&device).ok();
                phases[1] = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let grads = GroupGrads::split(&model, grads);
                let (model, _) = optim.step(model, grads, 1.0);
                B::sync(&device).ok();
                phases[2] = t.elapsed().as_secs_f64();
                model
            };
            let mut first = [0.0; 3];
            let heartbeat = Heartbeat::start("first training step", self.heartbeat, backend);
            model = one_step(model, &mut first);
            drop(heartbeat);
            let first_kernels = kernels::counts();
            let first_s: f64 = first.iter().sum();
            let phases = if micro > 1 {
                format!(
                    "forward and backward in {micro} micro-batches {:.2} s, optimizer {:.2} s",
                    first[0], first[2]
                )
            } else {
                format!(
                    "forward {:.2} s, backward {:.2} s, optimizer {:.2} s",
                    first[0], first[1], first[2]
                )
            };
            eprintln!(
                "first training step: {first_s:.2} s ({phases}){}",
                if first_kernels.any() { format!("; {first_kernels}") } else { String::new() }
            );
            let mut phases = [0.0; 3];
            for _ in 1..self.warmup.max(1) {
                model = one_step(model, &mut phases);
            }
            let mut total = [0.0; 3];
            let t0 = Instant::now();
            for _ in 0..self.steps {
                model = one_step(model, &mut phases);
                total.iter_mut().zip(phases).for_each(|(t, p)| *t += p);
            }
            let n = self.steps.max(1) as f64;
            let dt = t0.elapsed().as_secs_f64() / n;
            let mut line = json!({
                "what": "train_step", "stack": "clip (burn 0.21)",
                "ms_per_step": round1(dt * 1e3), "samples_per_s": round2(b as f64 / dt),
                "optimizer_ms": round1(total[2] / n * 1e3),
                "first_step_s": round2(first_s), "first_optimizer_s": round2(first[2]),
                "gflop_per_step": round1(flops.train_step() / 1e9), "achieved_tflops": tflops(flops.train_step(), dt),
            });
            if micro > 1 {
                extend(
                    &mut line,
                    &json!({
                        "forward_backward_ms": round1(total[0] / n * 1e3), "first_forward_backward_s": round2(first[0]),
                    }),
                );
            } else {
                extend(
                    &mut line,
                    &json!({
                        "forward_ms": round1(total[0] / n * 1e3), "backward_ms": round1(total[1] / n * 1e3),
                        "first_forward_s": round2(first[0]), "first_backward_s": round2(first[1]),
                    }),
                );
            }
            extend(&mut line, &common);
            if first_kernels.any() {
                extend(
                    &mut line,
                    &json!({
                        "first_step_kernels_compiled": first_kernels.compiled,
                        "first_step_kernels_from_cache": first_kernels.from_cache,
                        "first_step_shapes_autotuned": first_kernels.tuned,
                    }),
                );
            }
            if let Some((reserved, in_use)) =
                (backend == "cuda").then(kernels::cuda_memory).flatten()
            {
                extend(
                    &mut line,
                    &json!({ "gpu_reserved_gib": round2(gib(reserved)), "gpu_in_use_gib": round2(gib(in_use)) }),
                );
            }
            if let Some(peak) = peak_rss_bytes() {
                extend(&mut line, &json!({ "peak_rss_gib": round2(gib(peak)) }));
            }
            println!("{line}");
        }
        if self.mode == "forward" || self.mode == "both" {
            let inner = model.valid();
            let (images, ids, mask) = (images.inner(), ids.inner(), mask.inner());
            let forward = || {
                let out = inner.forward(images.clone(), ids.clone(), mask.clone());
                let _ = out.loss.into_data();
            };
            let t0 = Instant::now();
            let heartbeat = Heartbeat::start("first forward", self.heartbeat, backend);
            forward();
            drop(heartbeat);
            let first = t0.elapsed().as_secs_f64();
            eprintln!("first forward: {first:.2} s");
            for _ in 1..self.warmup.max(1) {
                forward();
            }
            let t0 = Instant::now();
            for _ in 0..self.steps {
                forward();
            }
            let dt = t0.elapsed().as_secs_f64() / self.steps.max(1) as f64;
            let mut line = json!({
                "what": "forward", "stack": "clip (burn 0.21)",
                "ms_per_step": round1(dt * 1e3), "samples_per_s": round2(b as f64 / dt), "first_forward_s": round2(first),
                "gflop_per_step": round1(flops.total() / 1e9), "achieved_tflops": tflops(flops.total(), dt),
            });
            extend(&mut line, &common);
            println!("{line}");
            let _ = <B::InnerBackend as Backend>::sync(&Default::default());
        }
        Ok(())
    }
}

/// The training settings of the benchmark's optimizer step: the seed notebook's experiment
/// (`configs/flickr30k-rn50-distilbert.toml`, embedded: Adam, lr 1e-4, coupled weight decay 5e-4
/// on every parameter, no clipping) at the benchmark's precision.
fn bench_spec(precision: Precision) -> Result<TrainSpec> {
    let seed = ExperimentConfig::parse(
        crate::import::SEED_TOML,
        Path::new(crate::import::SEED_PATH),
        &[],
    )?;
    Ok(TrainSpec { precision, ..seed.train })
}

/// The process's peak resident memory (`VmHWM`), where the system reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Adds `extra`'s fields to the JSON object `line`.
fn extend(line: &mut Value, extra: &Value) {
    if let (Some(line), Some(extra)) = (line.as_object_mut(), extra.as_object()) {
        line.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clip_train::config::OptimizerKind;

    #[test]
    fn the_benchmarked_step_is_the_seed_notebooks_adam() {
        let spec = bench_spec(Precision::Bf16Mixed).unwrap();
        assert_eq!(spec.optimizer, OptimizerKind::Adam);
        assert_eq!((spec.lr, spec.weight_decay, spec.weight_decay_1d), (1e-4, 5e-4, true));
        assert_eq!(spec.grad_clip_norm, None);
        assert_eq!(spec.precision, Precision::Bf16Mixed);
    }
}
