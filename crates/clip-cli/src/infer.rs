//! `clip embed`, `clip search`, `clip zero-shot`, `clip eval`: using a trained model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use clip_data::{CaptionDataset, ClipLoader, Split, SplitDataset};
use clip_infer::embed::list_images;
use clip_infer::index::EmbeddingIndex;
use clip_infer::zeroshot::{logit_scale_and_bias, parse_templates, true_label, DEFAULT_TEMPLATE};
use clip_infer::{
    search, Confusion, ImageLabels, LoadedModel, RunDir, SearchService, ZeroShotClassifier,
};
use clip_plot::{render_grid_with, Tile};
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{dispatch_infer, BackendChoice, InferTask};

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    crate::backend::parse_backend(s)
}

#[derive(Args, Debug, Clone)]
pub struct EmbedArgs {
    /// Run directory of the model.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Folder of images to embed (recursively).
    #[arg(long, conflicts_with = "split")]
    pub images: Option<PathBuf>,
    /// Embed the images of the run's `train`, `val` or `test` split instead.
    #[arg(long)]
    pub split: Option<String>,
    /// Index directory (created, or updated with new and changed images).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Decoding threads.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    #[arg(long, value_parser = parse_backend, default_value = "auto")]
    pub backend: BackendChoice,
}

#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// Index directory made by `clip embed`.
    #[arg(long)]
    pub index: PathBuf,
    /// Text query (text → image).
    pub query: Option<String>,
    /// Image query: image → image, or image → text with --captions.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Captions to rank for --image, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "image")]
    pub captions: Vec<String>,
    /// Captions to rank for --image, one per line.
    #[arg(long, requires = "image")]
    pub captions_file: Option<PathBuf>,
    #[arg(short, long, default_value_t = 9)]
    pub k: usize,
    /// Grid PNG of the matches (an existing file is replaced only if clip drew it).
    #[arg(long, default_value = "search-results.png")]
    pub grid: PathBuf,
    /// Replace --grid even if it is a file clip did not write.
    #[arg(long)]
    pub overwrite: bool,
    /// Use this run's model instead of the one recorded in the index (must be the same model).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[arg(long, value_parser = parse_backend, default_value = "auto")]
    pub backend: BackendChoice,
}

#[derive(Args, Debug, Clone)]
pub struct ZeroShotArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Folder of images to classify (recursively).
    #[arg(long)]
    pub images: PathBuf,
    /// Class names, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub labels: Vec<String>,
    /// Prompt templates, one per line with `{}` for the label (default: "a photo of a {}.").
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// CSV giving each image's true label (columns `image` and --label-column); without it,
    /// an image's folder name is its label when it is one of the labels.
    #[arg(long)]
    pub ground_truth: Option<PathBuf>,
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Labels shown per image.
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    /// Print every image (default: the first 20).
    #[arg(long)]
    pub all: bool,
    /// Write predictions, accuracy and the confusion matrix here as JSON (an existing file is
    /// replaced only if clip wrote it).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Replace --json even if it is a file clip did not write.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, value_parser = parse_backend, default_value = "auto")]
    pub backend: BackendChoice,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// `val` (default), `train`, or `test` (a split the captions file defines: Karpathy's
    /// 1k test images, the protocol published Flickr30k results use).
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Where to write the JSON (default: RUN/eval-<split>.json; an existing file elsewhere is
    /// replaced only if clip wrote it).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Replace --json even if it is a file clip did not write.
    #[arg(long)]
    pub overwrite: bool,
    /// CSV of image labels (columns `image` = file name, and --label-column): also report
    /// class-level retrieval, where any item of the same label is a hit (for datasets whose
    /// captions name a class, such as Fashion-MNIST's labels.csv).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    #[arg(long, default_value = "label")]
    pub label_column: String,
    #[arg(long, value_parser = parse_backend, default_value = "auto")]
    pub backend: BackendChoice,
}

/// Whether clip may write the output file `path` that `flag` names (checked before any work):
/// missing, recognised as clip's (a marked PNG or a tagged JSON report), or `overwrite`.
pub(crate) fn claim_output(path: &Path, overwrite: bool, flag: &str, kind: Output) -> Result<()> {
    let is_ours = match kind {
        Output::Png => clip_plot::written_by_clip,
        Output::Json => clip_data::fs::is_tagged_json,
    };
    let hint = format!("Give {flag} another path, or add --overwrite to replace this file.");
    clip_data::fs::claim_file(path, overwrite, is_ours, &hint)?;
    Ok(())
}

/// The kinds of output file [`claim_output`] recognises as clip's.
#[derive(Clone, Copy)]
pub(crate) enum Output {
    Png,
    Json,
}

pub(crate) fn progress_bar(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, ETA {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// The image files of a run's split.
pub(crate) fn split_images(
    run: &Path,
    split: &str,
    card: &clip_infer::ModelCard,
) -> Result<Vec<PathBuf>> {
    split_images_of(run, split, card, "--split")
}

/// [`split_images`], naming the flag that chose the side in its errors.
pub(crate) fn split_images_of(
    run: &Path,
    split: &str,
    card: &clip_infer::ModelCard,
    flag: &str,
) -> Result<Vec<PathBuf>> {
    let s = Split::load(&RunDir::new(run).split())?;
    let names = split_side_of(&s, split, run, flag)?;
    Ok(names.iter().map(|n| card.data.images.join(n)).collect())
}

/// The image names of a run's `train`, `val` or `test` side; an empty test side is an error.
pub(crate) fn split_side<'a>(s: &'a Split, side: &str, run: &Path) -> Result<&'a [String]> {
    split_side_of(s, side, run, "--split")
}

/// [`split_side`], naming the flag that chose the side in its errors.
pub(crate) fn split_side_of<'a>(
    s: &'a Split,
    side: &str,
    run: &Path,
    flag: &str,
) -> Result<&'a [String]> {
    let names = s
        .side(side)
        .with_context(|| format!("{flag} must be `train`, `val` or `test`, not {side:?}"))?;
    if side == "test" && names.is_empty() {
        bail!(
            "{}: this run's split has no test images (only a split the captions file defines, such as Karpathy's, \
             has a test side, and its images must be on disk)",
            run.display()
        );
    }
    Ok(names)
}

impl InferTask for EmbedArgs {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, backend: &str) -> Result<()> {
        EmbeddingIndex::claim_dir(&self.out)?;
        let model = LoadedModel::<B>::from_run(&self.checkpoint, &device)?;
        let files = match (&self.images, &self.split) {
            (Some(dir), _) => {
                list_images(dir).with_context(|| format!("listing {}", dir.display()))?
            }
            (None, Some(split)) => split_images(&self.checkpoint, split, &model.card)?,
            (None, None) => bail!("give --images DIR or --split train|val"),
        };
        let files: Vec<PathBuf> =
            files.into_iter().map(|p| std::fs::canonicalize(&p).unwrap_or(p)).collect();
        // Keep rows of files still there and unchanged; embed the new and the changed.
        let mut refresh = EmbeddingIndex::open_for(&self.out, &model)?.refresh(&model.id, &files);
        println!(
            "{} images: {} already indexed, {} to embed, {} removed ({backend})",
            files.len(),
            refresh.unchanged,
            refresh.todo.len(),
            refresh.removed
        );
        let bar = progress_bar(refresh.todo.len(), "embedding");
        let emb =
            model.embed_images(&refresh.todo, self.batch, self.workers, &device, &mut |done, _| {
                bar.set_position(done as u64)
            });
        bar.finish_and_clear();
        for (p, reason) in &emb.skipped {
            eprintln!("skipped {}: {reason}", p.display());
        }
        refresh.add(&emb)?;
        let mut index = refresh.index;
        index.save(&self.out)?;
        println!(
            "index {}: {} images, {} dimensions ({} skipped as unreadable)",
            self.out.display(),
            index.len(),
            index.meta.dim,
            emb.skipped.len()
        );
        Ok(())
    }
}

impl InferTask for SearchArgs {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, _backend: &str) -> Result<()> {
        claim_output(&self.grid, self.overwrite, "--grid", Output::Png)?;
        let service = SearchService::<B>::open(&self.index, self.checkpoint.as_deref(), &device)?;
        let mut captions = self.captions.clone();
        if let Some(f) = &self.captions_file {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            captions
                .extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
        }
        let (query, label) = match (&self.query, &self.image) {
            (Some(text), None) => (service.embed_text(text)?, format!("\"{text}\"")),
            (None, Some(img)) => {
                let bytes = clip_data::shards::read_image_bytes(img)?;
                let query = service
                    .embed_image_bytes(bytes, &img.display().to_string())
                    .with_context(|| "cannot use as a query")?;
                (query, img.display().to_string())
            }
            (Some(_), Some(_)) => bail!("give a text query or --image, not both"),
            (None, None) => bail!("give a text query or --image FILE"),
        };
        if !captions.is_empty() {
            // Image → text: rank the given captions.
            let (rows, dim) = service.model.embed_texts(&captions, &device)?;
            let hits = &search(&rows, &query, dim, captions.len(), 1)[0];
            println!("captions for {label}:");
            for h in hits {
                println!("{:.4}  {}", h.score, captions[h.index]);
            }
            return Ok(());
        }
        if service.is_empty() {
            bail!("{}: the index is empty, nothing to search", self.index.display());
        }
        let hits = service.nearest(&query, self.k)?;
        println!("top {} of {} for {label}:", hits.len(), service.len());
        let mut tiles = Vec::new();
        for h in &hits {
            println!("{:.4}  {}", h.score, h.path.display());
            let name =
                h.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            tiles.push(Tile { image: h.path.clone(), caption: format!("{:.3} {name}", h.score) });
        }
        let columns = (hits.len() as f64).sqrt().ceil() as usize;
        let png = render_grid_with(&label, &tiles, columns, 200, &|p| {
            clip_data::imaging::decode_rgb(p).ok()
        })?;
        clip_data::fs::write_atomic(&self.grid, &png)?;
        println!("grid: {}", self.grid.display());
        Ok(())
    }
}

#[derive(serde::Serialize)]
struct ZeroShotReport {
    labels: Vec<String>,
    templates: Vec<String>,
    predictions: Vec<(String, Vec<(String, f32)>)>,
    accuracy: Option<f64>,
    evaluated: usize,
    confusion: Option<Confusion>,
    skipped: Vec<String>,
}

impl InferTask for ZeroShotArgs {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, _backend: &str) -> Result<()> {
        if let Some(path) = &self.json {
            claim_output(path, self.overwrite, "--json", Output::Json)?;
        }
        let model = LoadedModel::<B>::from_run(&self.checkpoint, &device)?;
        let labels: Vec<String> =
            self.labels.iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        let templates = match &self.templates {
            Some(p) => parse_templates(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
                &p.display().to_string(),
            )?,
            None => vec![DEFAULT_TEMPLATE.to_string()],
        };
        let classifier = ZeroShotClassifier::new(&model, &labels, &templates, &device)?;
        let files = list_images(&self.images)
            .with_context(|| format!("listing {}", self.images.display()))?;
        if files.is_empty() {
            bail!("{}: no images found", self.images.display());
        }
        let bar = progress_bar(files.len(), "classifying");
        let emb = model.embed_images(&files, self.batch, 4, &device, &mut |done, _| {
            bar.set_position(done as u64)
        });
        bar.finish_and_clear();
        for (p, reason) in &emb.skipped {
            eprintln!("skipped {}: {reason}", p.display());
        }
        let truth_map = match &self.ground_truth {
            Some(p) => Some(ImageLabels::read(p, &self.label_column)?),
            None => None,
        };
        let (scale, bias) = logit_scale_and_bias(&model.model);
        // A model trained on the sigmoid loss gives each label its own probability.
        if bias.is_some() {
            println!("sigmoid-loss model: each label's probability is independent (they need not sum to 100%)");
        }
        let scores = classifier
            .classify(&emb, scale, bias, self.top, |p| true_label(p, &labels, truth_map.as_ref()));
        for (i, p) in scores.predictions.iter().enumerate() {
            if self.all || i < 20 {
                let shown: Vec<String> =
                    p.top.iter().map(|(l, p)| format!("{l} {:.1}%", p * 100.0)).collect();
                println!("{}: {}", p.path.display(), shown.join(", "));
            }
        }
        if !self.all && emb.paths.len() > 20 {
            println!("... {} more (--all shows every image)", emb.paths.len() - 20);
        }
        let predictions: Vec<(String, Vec<(String, f32)>)> =
            scores.predictions.into_iter().map(|p| (p.path.display().to_string(), p.top)).collect();
        let confusion = scores.confusion;
        let evaluated = confusion.total();
        let (accuracy, confusion) = if evaluated > 0 {
            println!(
                "\naccuracy {:.2}% on {evaluated} labelled images\n{}",
                confusion.accuracy() * 100.0,
                confusion.table()
            );
            (Some(confusion.accuracy()), Some(confusion))
        } else {
            (None, None)
        };
        if let Some(path) = &self.json {
            let report = ZeroShotReport {
                labels,
                templates,
                predictions,
                accuracy,
                evaluated,
                confusion,
                skipped: emb.skipped.iter().map(|(p, r)| format!("{}: {r}", p.display())).collect(),
            };
            clip_data::fs::write_atomic(path, &clip_data::fs::tagged_json("zero-shot", &report)?)?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

impl InferTask for EvalArgs {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, backend: &str) -> Result<()> {
        // The default, RUN/eval-<split>.json, is a file of the run's; a path given is checked.
        if let Some(path) = &self.json {
            claim_output(path, self.overwrite, "--json", Output::Json)?;
        }
        let model = LoadedModel::<B>::from_run(&self.checkpoint, &device)?;
        let data = &model.card.data;
        data.ensure_synthetic()?;
        let dataset = CaptionDataset::load(&data.dataset_config()?)?;
        let run = RunDir::new(&self.checkpoint);
        let split_path = run.split();
        let split = SplitDataset::from_split(&dataset, Split::load(&split_path)?, &split_path)?;
        split_side(&split.split, &self.split, &self.checkpoint)?;
        let pairs = match self.split.as_str() {
            "train" => split.train,
            "test" => split.test,
            _ => split.val,
        };
        if pairs.is_empty() {
            bail!("the {} split of {} is empty", self.split, self.checkpoint.display());
        }
        println!(
            "evaluating {} on the {} split: {} images, {} captions ({backend})",
            model.weights.display(),
            self.split,
            pairs.images().len(),
            pairs.len()
        );
        let image_labels = match &self.labels {
            Some(path) => {
                let labels = ImageLabels::read(path, &self.label_column)?;
                Some(labels.indices(
                    pairs.images().iter().map(|i| i.name.as_str()),
                    &labels.classes(),
                    path,
                )?)
            }
            None => None,
        };
        let loader = ClipLoader::new(pairs, data.eval_pipeline()?, data.loader(false));
        let extras =
            clip_infer::EvalExtras { image_labels: image_labels.as_deref(), zero_shot: None };
        let e = clip_infer::evaluate_with(
            &model.model,
            &loader,
            &device,
            &mut clip_model::TextFeatureCache::new(usize::MAX),
            extras,
        )?;
        let r = &e.retrieval;
        println!(
            "loss {:.4}   in-batch accuracy image→text {:.1}%  text→image {:.1}%",
            e.loss,
            e.acc_i2t * 100.0,
            e.acc_t2i * 100.0
        );
        println!(
            "{:<14} {:>7} {:>7} {:>7} {:>11} {:>13}",
            "direction", "R@1", "R@5", "R@10", "mean rank", "median rank"
        );
        println!(
            "{:<14} {:>6.2}% {:>6.2}% {:>6.2}% {:>11.2} {:>13.1}",
            "text→image",
            r.t2i_r1 * 100.0,
            r.t2i_r5 * 100.0,
            r.t2i_r10 * 100.0,
            r.t2i_mean_rank,
            r.t2i_median_rank
        );
        println!(
            "{:<14} {:>6.2}% {:>6.2}% {:>6.2}% {:>11.2} {:>13.1}",
            "image→text",
            r.i2t_r1 * 100.0,
            r.i2t_r5 * 100.0,
            r.i2t_r10 * 100.0,
            r.i2t_mean_rank,
            r.i2t_median_rank
        );
        if let Some(l) = &e.label_retrieval {
            println!("class level (a hit is any item of the same `{}`):", self.label_column);
            println!(
                "{:<14} {:>6.2}% {:>6.2}% {:>6.2}% {:>11.2} {:>13.1}",
                "text→image",
                l.t2i_r1 * 100.0,
                l.t2i_r5 * 100.0,
                l.t2i_r10 * 100.0,
                l.t2i_mean_rank,
                l.t2i_median_rank
            );
            println!(
                "{:<14} {:>6.2}% {:>6.2}% {:>6.2}% {:>11.2} {:>13.1}",
                "image→text",
                l.i2t_r1 * 100.0,
                l.i2t_r5 * 100.0,
                l.i2t_r10 * 100.0,
                l.i2t_mean_rank,
                l.i2t_median_rank
            );
        }
        let path = self.json.clone().unwrap_or_else(|| run.eval_report(&self.split));
        clip_data::fs::write_atomic(&path, &clip_data::fs::tagged_json("eval", &e)?)?;
        println!("wrote {}", path.display());
        Ok(())
    }
}

pub fn embed(args: EmbedArgs) -> Result<()> {
    dispatch_infer(args.backend, args)
}
pub fn search_cmd(args: SearchArgs) -> Result<()> {
    dispatch_infer(args.backend, args)
}
pub fn zero_shot(args: ZeroShotArgs) -> Result<()> {
    dispatch_infer(args.backend, args)
}
pub fn eval(args: EvalArgs) -> Result<()> {
    dispatch_infer(args.backend, args)
}
