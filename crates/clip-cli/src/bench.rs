//! `clip bench step`: the model's forward and training-step throughput on synthetic batches,
//! the Rust side of the comparisons in BENCHMARKS.md (peers: `crates/clip-model/benches/*.py`).

use std::time::Instant;

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::optim::{decay::WeightDecayConfig, AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor};
use clap::Args;
use clip_model::{ClipConfig, Precision};

use crate::backend::{dispatch, BackendChoice, BackendTask};

#[derive(Args, Debug, Clone)]
pub struct StepArgs {
    /// auto, cuda or cpu.
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
    /// `train` (forward + backward + Adam), `forward` (no grad, eval mode) or `both`.
    #[arg(long, default_value = "both")]
    pub mode: String,
}

pub fn step(args: StepArgs) -> Result<()> {
    dispatch(args.backend, args)
}

impl BackendTask for StepArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: &str) -> Result<()> {
        let precision: Precision = serde_json::from_value(serde_json::Value::String(self.precision.clone()))
            .map_err(|_| anyhow::anyhow!("--precision must be fp32, bf16-mixed or fp16-mixed"))?;
        B::seed(&device, 0);
        let model = ClipConfig::seed().init::<B>(&device).with_precision(precision);
        let (b, s, l) = (self.batch, self.image_size, self.seq);
        let images = Tensor::<B, 4>::random([b, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
        let ids = Tensor::<B, 2, Int>::random([b, l], Distribution::Uniform(1000.0, 30000.0), &device);
        let mask = Tensor::<B, 2, Int>::ones([b, l], &device);
        let common = format!(
            "\"backend\": \"{backend}\", \"precision\": \"{}\", \"batch\": {b}, \"image\": {s}, \"seq\": {l}",
            self.precision
        );

        if self.mode == "train" || self.mode == "both" {
            let mut optim = AdamConfig::new().with_weight_decay(Some(WeightDecayConfig::new(5e-4))).init();
            let mut model = model.clone();
            let mut one_step = |model: clip_model::ClipModel<B>| {
                let out = model.forward(images.clone(), ids.clone(), mask.clone());
                let grads = GradientsParams::from_grads(out.loss.backward(), &model);
                let model = optim.step(1e-4, model, grads);
                B::sync(&device).ok();
                model
            };
            let t0 = Instant::now();
            model = one_step(model);
            let first = t0.elapsed().as_secs_f64();
            eprintln!("first training step: {first:.2} s");
            for _ in 1..self.warmup.max(1) {
                model = one_step(model);
            }
            let t0 = Instant::now();
            for _ in 0..self.steps {
                model = one_step(model);
            }
            let dt = t0.elapsed().as_secs_f64() / self.steps.max(1) as f64;
            println!(
                "{{\"what\": \"train_step\", \"stack\": \"clip (burn 0.21)\", {common}, \"ms_per_step\": {:.1}, \"samples_per_s\": {:.2}, \"first_step_s\": {:.2}}}",
                dt * 1e3,
                b as f64 / dt,
                first
            );
        }
        if self.mode == "forward" || self.mode == "both" {
            let inner = model.valid();
            let (images, ids, mask) = (images.inner(), ids.inner(), mask.inner());
            let forward = || {
                let out = inner.forward(images.clone(), ids.clone(), mask.clone());
                let _ = out.loss.into_data();
            };
            let t0 = Instant::now();
            forward();
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
            println!(
                "{{\"what\": \"forward\", \"stack\": \"clip (burn 0.21)\", {common}, \"ms_per_step\": {:.1}, \"samples_per_s\": {:.2}, \"first_forward_s\": {:.2}}}",
                dt * 1e3,
                b as f64 / dt,
                first
            );
            let _ = <B::InnerBackend as Backend>::sync(&Default::default());
        }
        Ok(())
    }
}

