//! Import upstream weights into the seed's CLIP model and export them again.
//!
//! ```sh
//! # The seed notebook's Lightning checkpoint (ResNet-50 + DistilBERT + heads):
//! cargo run --release -p clip-model --example import_weights -- --checkpoint path/to/seed.ckpt --out clip.safetensors
//! # Hugging Face DistilBERT weights into the text tower, timm/torchvision ResNet-50 into the image tower:
//! cargo run --release -p clip-model --example import_weights -- --text distilbert-base-uncased/ --image resnet50.pth
//! ```

use std::path::PathBuf;

use burn::backend::Flex;
use clip_model::import::{export_clip, hf_text_config, import_clip, import_resnet, import_text, ImportReport};
use clip_model::ClipConfig;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut checkpoint, mut text, mut image, mut out) = (None, None, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().map(PathBuf::from).ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--checkpoint" => checkpoint = Some(value),
            "--text" => text = Some(value),
            "--image" => image = Some(value),
            "--out" => out = Some(value),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let device = Default::default();
    let mut config = ClipConfig::seed();
    if let Some(dir) = &text {
        // An HF model directory: its config.json decides the tower's shape.
        let (text_config, _) = hf_text_config(&dir.join("config.json"))?;
        config.text = text_config;
    }
    let mut model = config.init::<Flex>(&device);
    if let Some(path) = &checkpoint {
        let (m, report) = import_clip(model, path)?;
        summary(path, &report);
        model = m;
    }
    if let Some(dir) = &text {
        let (_, naming) = hf_text_config(&dir.join("config.json"))?;
        let file = ["model.safetensors", "pytorch_model.bin"].iter().map(|f| dir.join(f)).find(|p| p.is_file());
        let file = file.ok_or(format!("{}: no model.safetensors or pytorch_model.bin", dir.display()))?;
        let (tower, report) = import_text(model.text_encoder.model, &file, naming)?;
        summary(&file, &report);
        model.text_encoder.model = tower;
    }
    if let Some(path) = &image {
        let (tower, report) = import_resnet(model.image_encoder.model, path)?;
        summary(path, &report);
        model.image_encoder.model = tower;
    }
    if let Some(path) = &out {
        export_clip(&model, path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn summary(path: &std::path::Path, r: &ImportReport) {
    println!(
        "{}: {} tensors loaded, {} unused, {} ignored buffers",
        path.display(),
        r.applied.len(),
        r.unused.len(),
        r.ignored.len()
    );
    for u in &r.unused {
        println!("  unused: {u}");
    }
}
