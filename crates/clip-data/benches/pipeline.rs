//! Data-pipeline benchmark: decode+resize+normalize images/s on one core, loader batches/s at
//! the seed's settings (224 px, batch 32, 4 workers), and the loader's peak memory beside
//! burn's `DataLoader` with a slow consumer.
//!
//! Usage: `cargo bench -p clip-data --bench pipeline -- DIR` where DIR holds JPEGs made by
//! `benches/data_peer.py DIR` (the Python peer, run on the same files). `cargo xtask bench-data`
//! runs both. Prints one JSON object per line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use clip_data::imaging::{ImageTransform, View};
use clip_data::{
    CaptionPair, ClipBatch, ClipLoader, DataConfig, ExamplePipeline, HostBatch, ImageCaptions,
    LoaderConfig, PairDataset,
};

const WORDS: [&str; 24] = [
    "a", "man", "in", "blue", "shirt", "is", "standing", "on", "the", "street", "while", "two",
    "dogs", "run", "across", "green", "grass", "near", "an", "old", "wooden", "fence", "with",
    "children",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let dir = PathBuf::from(args.first().cloned().unwrap_or_else(|| "/tmp/data_ref_imgs".into()));
    let mode = args.get(1).map(String::as_str).unwrap_or("all");
    let files = jpegs(&dir);
    if files.is_empty() {
        eprintln!(
            "no JPEGs in {}: run `python3 crates/clip-data/benches/data_peer.py {}` first",
            dir.display(),
            dir.display()
        );
        std::process::exit(2);
    }
    match mode {
        "all" => {
            decode_per_core(&files);
            loader_throughput(&files);
            let exe = std::env::current_exe().expect("bench executable");
            for which in ["memory-ours", "memory-burn"] {
                let out = std::process::Command::new(&exe)
                    .arg(&dir)
                    .arg(which)
                    .output()
                    .expect("run memory probe");
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        "memory-ours" => memory(&files, false),
        "memory-burn" => memory(&files, true),
        other => panic!("unknown mode {other}"),
    }
}

fn jpegs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn decode_per_core(files: &[PathBuf]) {
    let t = ImageTransform::seed(224);
    let mut out = vec![0.0; t.numel()];
    for f in files.iter().take(20) {
        t.load_into(f, &View::default(), &mut out).unwrap();
    }
    let start = Instant::now();
    let rounds = 3;
    for _ in 0..rounds {
        for f in files {
            t.load_into(f, &View::default(), &mut out).unwrap();
        }
    }
    let dt = start.elapsed().as_secs_f64();
    println!(
        "{{\"what\": \"decode_resize_normalize\", \"stack\": \"clip-data (image + fast_image_resize)\", \"threads\": 1, \"images_per_s\": {:.1}, \"image\": \"500x375 jpeg q90 -> 224x224\"}}",
        (rounds * files.len()) as f64 / dt
    );
}

fn flickr_like(files: &[PathBuf]) -> (PairDataset, DataConfig) {
    let images = files
        .iter()
        .enumerate()
        .map(|(i, f)| ImageCaptions {
            name: f.file_name().unwrap().to_string_lossy().into_owned(),
            path: f.clone(),
            // Five captions of 10-17 words, Flickr30k's typical length.
            captions: (0..5)
                .map(|k| {
                    (0..10 + (i * 5 + k) % 8)
                        .map(|w| WORDS[(i * 7 + k * 3 + w * 5) % WORDS.len()])
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect(),
        })
        .collect();
    let config = DataConfig::new("results.csv", "images");
    (PairDataset::new(images), config)
}

fn loader_throughput(files: &[PathBuf]) {
    let (pairs, config) = flickr_like(files);
    let loader = ClipLoader::new(
        pairs,
        ExamplePipeline::train(&config.pipeline_config()).unwrap(),
        config.loader(true),
    );
    // Warm up the page cache and thread-local resizers.
    for b in loader.epoch(0).take(2) {
        b.unwrap();
    }
    let start = Instant::now();
    let mut batches = 0;
    let mut images = 0;
    for epoch in 1..3 {
        for b in loader.epoch(epoch) {
            images += b.unwrap().len();
            batches += 1;
        }
    }
    let dt = start.elapsed().as_secs_f64();
    println!(
        "{{\"what\": \"loader\", \"stack\": \"clip-data ClipLoader\", \"batch\": 32, \"workers\": 4, \"image\": 224, \"cores\": {}, \"batches_per_s\": {:.2}, \"images_per_s\": {:.1}}}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        batches as f64 / dt,
        images as f64 / dt
    );
}

/// burn's loader needs a `Batcher`; this one does the same per-item work as `ClipLoader`.
#[derive(Clone)]
struct BurnBatcher(Arc<ExamplePipeline>);

impl Batcher<Flex, CaptionPair, ClipBatch<Flex>> for BurnBatcher {
    fn batch(
        &self,
        items: Vec<CaptionPair>,
        device: &burn::backend::flex::FlexDevice,
    ) -> ClipBatch<Flex> {
        let numel = self.0.transform.numel();
        let mut images = vec![0.0; items.len() * numel];
        let mut tokens = Vec::new();
        for (i, pair) in items.iter().enumerate() {
            tokens.push(
                self.0.example_into(pair, 0, i, &mut images[i * numel..(i + 1) * numel]).unwrap(),
            );
        }
        let idx: Vec<usize> = items.iter().map(|p| p.image_index).collect();
        HostBatch::collate(
            images,
            self.0.transform.size as usize,
            tokens,
            self.0.padding(),
            idx.clone(),
            idx,
        )
        .to_device(device)
    }
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Peak resident memory while a consumer takes 100 ms per batch (a slow training step).
fn memory(files: &[PathBuf], burn_loader: bool) {
    let (pairs, config) = flickr_like(files);
    let pipeline = ExamplePipeline::train(&config.pipeline_config()).unwrap();
    let base = rss_mb();
    let mut peak = base;
    let mut n = 0;
    let slow = Duration::from_millis(100);
    let batch_mb = 32.0 * 3.0 * 224.0 * 224.0 * 4.0 / 1048576.0;
    if burn_loader {
        let loader = DataLoaderBuilder::new(BurnBatcher(Arc::new(pipeline)))
            .batch_size(32)
            .shuffle(42)
            .num_workers(4)
            .build(pairs);
        for _batch in loader.iter() {
            peak = peak.max(rss_mb());
            n += 1;
            std::thread::sleep(slow);
        }
    } else {
        let cfg = LoaderConfig {
            batch_size: 32,
            num_workers: 4,
            prefetch_batches: 2,
            shuffle: true,
            seed: 42,
            drop_last: false,
        };
        let loader = ClipLoader::new(pairs, pipeline, cfg);
        for b in loader.epoch(0) {
            b.unwrap();
            peak = peak.max(rss_mb());
            n += 1;
            std::thread::sleep(slow);
        }
    }
    println!(
        "{{\"what\": \"loader_peak_memory\", \"stack\": \"{}\", \"batches\": {n}, \"consumer_ms_per_batch\": 100, \"peak_rss_growth_mb\": {:.0}, \"batch_mb\": {:.1}}}",
        if burn_loader { "burn DataLoader (4 workers)" } else { "clip-data ClipLoader (4 workers, prefetch 2)" },
        peak - base,
        batch_mb
    );
}
