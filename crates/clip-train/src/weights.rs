//! A new run's first weights: a whole CLIP checkpoint (`model.checkpoint`, a seed Lightning
//! file say) and/or pretrained towers (`model.image_weights`, `model.text_weights`), then the
//! configured towers frozen.

use burn::backend::Flex;
use burn::module::Module;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;
use clip_model::import::{import_clip, import_resnet, import_text, TextNaming};
use clip_model::{ClipConfig, ClipModel};

use crate::config::ExperimentConfig;
use crate::error::{Result, TrainError};
use crate::observer::Observer;

/// A fresh model whose weights are drawn on the CPU backend from `seed`, then moved to `device`:
/// the same seed gives the same model on every backend (burn's backends each have their own
/// random generator), so a run starts alike on Flex, LibTorch and CUDA.
pub fn seeded_init<B: Backend>(
    clip_config: &ClipConfig,
    seed: u64,
    device: &B::Device,
) -> ClipModel<B> {
    let cpu = Default::default();
    Flex::seed(&cpu, seed);
    let drawn = clip_config.init::<Flex>(&cpu);
    // Parameters are drawn lazily: draw them all now, in visiting order, while the generator
    // holds the seed (`into_record` would draw them in another order).
    crate::step::materialize(&drawn);
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(drawn.into_record(), ()).expect("a record serializes to bytes");
    let record = recorder.load(bytes, device).expect("bytes just written read back");
    clip_config.init::<B>(device).load_record(record)
}

/// Loads the configured initial weights into a fresh model.
pub(crate) fn initial_weights<B: Backend>(
    mut model: ClipModel<B>,
    config: &ExperimentConfig,
    clip_config: &ClipConfig,
    observer: &mut dyn Observer,
) -> Result<ClipModel<B>> {
    let m = &config.model;
    if let Some(path) = &m.checkpoint {
        let (loaded, report) = import_clip(model, path)?;
        observer.on_message(&format!(
            "{}: {} tensors loaded",
            path.display(),
            report.applied.len()
        ));
        for line in &report.skipped {
            observer.on_message(&format!("{}: skipped {line}", path.display()));
        }
        model = loaded;
    }
    if m.pretrained {
        if let Some(path) = &m.image_weights {
            let (tower, report) = import_resnet(model.image_encoder.model, path)?;
            observer.on_message(&format!(
                "{}: {} tensors loaded, unused: {:?}",
                path.display(),
                report.applied.len(),
                report.unused
            ));
            model.image_encoder.model = tower;
        }
        if let Some(path) = &m.text_weights {
            let file = if path.is_dir() {
                ["model.safetensors", "pytorch_model.bin"]
                    .iter()
                    .map(|f| path.join(f))
                    .find(|p| p.is_file())
                    .ok_or_else(|| TrainError::Config {
                        path: path.clone(),
                        message:
                            "model.text_weights: no model.safetensors or pytorch_model.bin here"
                                .into(),
                    })?
            } else {
                path.clone()
            };
            let naming = if model.text_encoder.model.embeddings.token_type_embeddings.is_some() {
                TextNaming::Bert
            } else {
                TextNaming::DistilBert
            };
            let (tower, report) = import_text(model.text_encoder.model, &file, naming)?;
            observer.on_message(&format!(
                "{}: {} tensors loaded, unused: {:?}",
                file.display(),
                report.applied.len(),
                report.unused
            ));
            model.text_encoder.model = tower;
        }
    }
    // Freezing applies to imported weights too.
    let (image, text) = clip_config.freeze(model.image_encoder.model, model.text_encoder.model);
    model.image_encoder.model = image;
    model.text_encoder.model = text;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;
    use clip_model::{ClipConfig, ResNetConfig, TextTransformerConfig};

    use super::seeded_init;

    /// Every float parameter's values, in visiting order.
    fn values<B: Backend, M: Module<B>>(m: &M) -> Vec<f32> {
        struct Collect(Vec<f32>);
        impl<B: Backend> ModuleVisitor<B> for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                self.0.extend(param.val().into_data().to_vec::<f32>().unwrap());
            }
        }
        let mut c = Collect(Vec::new());
        m.visit(&mut c);
        c.0
    }

    fn tiny() -> ClipConfig {
        ClipConfig {
            projection_dim: 4,
            ..ClipConfig::new(ResNetConfig::tiny(4), TextTransformerConfig::tiny())
        }
    }

    #[test]
    fn a_seed_gives_the_weights_the_training_backend_drew_before() {
        // Before weights were drawn on the CPU backend for every backend, a run on Flex seeded
        // its own autodiff backend and drew there: the same numbers, so runs keep their figures.
        type B = Autodiff<Flex>;
        let device = Default::default();
        let config = tiny();
        B::seed(&device, 11);
        // Drawn lazily: visiting draws them, now, from the seeded generator.
        let a = values(&config.init::<B>(&device));
        let b = values(&seeded_init::<B>(&config, 11, &device));
        assert!(a.len() > 1000);
        assert_eq!(a, b);
        assert_ne!(a, values(&seeded_init::<B>(&config, 12, &device)));
    }
}
