//! Zero-shot classification: each label becomes the mean embedding of prompt templates filled
//! with it ("a photo of a {}."), and an image takes the label whose embedding it is closest to.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;

use clip_data::CaptionTokenizer;
use clip_model::ClipModel;

use crate::card::LoadedModel;
use crate::embed::ImageEmbeddings;
use crate::error::{InferError, Result};
use crate::labels::ImageLabels;

/// The prompt used when no templates are given.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// Label embeddings ready to classify image embeddings.
#[derive(Debug, Clone)]
pub struct ZeroShotClassifier {
    pub labels: Vec<String>,
    /// `[labels, dim]`, rows L2-normalized.
    pub rows: Vec<f32>,
    pub dim: usize,
}

/// Reads templates, one per line (blank lines and `#` comments skipped); each must contain `{}`.
pub fn parse_templates(text: &str, source: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !t.contains("{}") {
            return Err(InferError::Input(format!(
                "{source}:{}: template {t:?} has no {{}} for the label",
                i + 1
            )));
        }
        out.push(t.to_string());
    }
    if out.is_empty() {
        return Err(InferError::Input(format!("{source}: no templates")));
    }
    Ok(out)
}

impl ZeroShotClassifier {
    pub fn new<B: Backend>(
        model: &LoadedModel<B>,
        labels: &[String],
        templates: &[String],
        device: &B::Device,
    ) -> Result<Self> {
        Self::from_model(&model.model, &model.tokenizer, labels, templates, device)
    }

    /// The classifier of a model in memory (during training, for per-epoch zero-shot accuracy).
    pub fn from_model<B: Backend>(
        model: &ClipModel<B>,
        tokenizer: &CaptionTokenizer,
        labels: &[String],
        templates: &[String],
        device: &B::Device,
    ) -> Result<Self> {
        if labels.is_empty() {
            return Err(InferError::Input("no labels given".into()));
        }
        if templates.is_empty() {
            return Err(InferError::Input("no prompt templates given".into()));
        }
        let prompts: Vec<String> =
            labels.iter().flat_map(|l| templates.iter().map(move |t| t.replace("{}", l))).collect();
        let (emb, dim) = crate::embed::embed_texts(model, tokenizer, &prompts, device)?;
        let t = templates.len();
        let mut rows = Vec::with_capacity(labels.len() * dim);
        for l in 0..labels.len() {
            let mut mean = vec![0f32; dim];
            for k in 0..t {
                let r = &emb[(l * t + k) * dim..(l * t + k + 1) * dim];
                mean.iter_mut().zip(r).for_each(|(m, v)| *m += v);
            }
            let n = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            rows.extend(mean.into_iter().map(|v| v / n));
        }
        Ok(Self { labels: labels.to_vec(), rows, dim })
    }

    /// Class probabilities (softmax of `scale` × cosine) of one normalized image embedding.
    pub fn probabilities(&self, image: &[f32], scale: f32) -> Vec<f32> {
        self.probabilities_with(image, scale, None)
    }

    /// [`probabilities`](Self::probabilities), or with a model trained on the sigmoid loss
    /// (`bias` given) SigLIP's independent per-label probabilities `σ(scale · cosine + bias)`,
    /// which need not sum to one: "none of these" is an answer.
    pub fn probabilities_with(&self, image: &[f32], scale: f32, bias: Option<f32>) -> Vec<f32> {
        let logits: Vec<f32> = self
            .rows
            .chunks(self.dim)
            .map(|r| scale * r.iter().zip(image).map(|(a, b)| a * b).sum::<f32>())
            .collect();
        if let Some(bias) = bias {
            return logits.into_iter().map(|l| 1.0 / (1.0 + (-(l + bias)).exp())).collect();
        }
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        exp.into_iter().map(|e| e / sum).collect()
    }

    /// Top-1 accuracy over image embeddings (`[n, dim]` rows; the argmax needs no normalization)
    /// with their true labels (indices into [`labels`](Self::labels)).
    pub fn accuracy(&self, images: &[f32], truth: &[usize]) -> f64 {
        let hits =
            images.chunks(self.dim).zip(truth).filter(|(row, &t)| self.predict(row) == t).count();
        hits as f64 / truth.len().max(1) as f64
    }

    /// The index of the most likely label.
    pub fn predict(&self, image: &[f32]) -> usize {
        let p = self.probabilities(image, 1.0);
        (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0)
    }
}

/// A model's logit scale (the inverse temperature) and, for a model trained on the sigmoid loss,
/// its logit bias: what [`ZeroShotClassifier::probabilities_with`] takes.
pub fn logit_scale_and_bias<B: Backend>(model: &ClipModel<B>) -> (f32, Option<f32>) {
    let scale: f32 = model.scale().into_scalar().elem();
    let bias = model.bias().map(|b| b.into_scalar().elem::<f32>());
    (scale, bias)
}

/// An image's true label as an index into `labels`: its label in `ground_truth` (by file name),
/// or without ground truth the name of its folder; `None` when that is not one of the labels.
pub fn true_label(
    path: &Path,
    labels: &[String],
    ground_truth: Option<&ImageLabels>,
) -> Option<usize> {
    let name = match ground_truth {
        Some(m) => m.get(path.file_name()?.to_str()?)?.to_string(),
        None => path.parent()?.file_name()?.to_str()?.to_string(),
    };
    labels.iter().position(|l| *l == name)
}

/// One classified image.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub path: PathBuf,
    /// The most likely labels with their probabilities, most likely first.
    pub top: Vec<(String, f32)>,
    /// The most likely label (an index into the labels).
    pub predicted: usize,
    /// The true label, when known.
    pub truth: Option<usize>,
}

/// Zero-shot classification of a set of images.
#[derive(Debug, Clone, PartialEq)]
pub struct ZeroShotScores {
    /// One per embedded image, in order.
    pub predictions: Vec<Prediction>,
    /// Of the images whose true label is known.
    pub confusion: Confusion,
}

impl ZeroShotScores {
    /// Top-1 accuracy over the images whose true label is known (`None` when there are none).
    pub fn accuracy(&self) -> Option<f64> {
        (self.confusion.total() > 0).then(|| self.confusion.accuracy())
    }
}

impl ZeroShotClassifier {
    /// Classifies embedded images at logit `scale` (and `bias`, see
    /// [`probabilities_with`](Self::probabilities_with)): each image's `top` labels, and the
    /// confusion of the images `truth` knows the label of (see [`true_label`]). Equal
    /// probabilities keep the labels' order.
    pub fn classify(
        &self,
        images: &ImageEmbeddings,
        scale: f32,
        bias: Option<f32>,
        top: usize,
        truth: impl Fn(&Path) -> Option<usize>,
    ) -> ZeroShotScores {
        let mut confusion = Confusion::new(&self.labels);
        let mut predictions = Vec::with_capacity(images.paths.len());
        for (i, p) in images.paths.iter().enumerate() {
            let probs = self.probabilities_with(
                &images.rows[i * images.dim..(i + 1) * images.dim],
                scale,
                bias,
            );
            let mut order: Vec<usize> = (0..self.labels.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let top = order.iter().take(top).map(|&l| (self.labels[l].clone(), probs[l])).collect();
            let truth = truth(p);
            if let Some(t) = truth {
                confusion.add(t, order[0]);
            }
            predictions.push(Prediction { path: p.clone(), top, predicted: order[0], truth });
        }
        ZeroShotScores { predictions, confusion }
    }
}

/// Counts of (true label, predicted label), with accuracy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    /// `matrix[truth][prediction]`.
    pub matrix: Vec<Vec<usize>>,
}

impl Confusion {
    pub fn new(labels: &[String]) -> Self {
        Self { labels: labels.to_vec(), matrix: vec![vec![0; labels.len()]; labels.len()] }
    }

    pub fn add(&mut self, truth: usize, prediction: usize) {
        self.matrix[truth][prediction] += 1;
    }

    pub fn total(&self) -> usize {
        self.matrix.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: usize = (0..self.labels.len()).map(|i| self.matrix[i][i]).sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// A text table: rows are true labels, columns predictions.
    pub fn table(&self) -> String {
        let w = self.labels.iter().map(|l| l.len()).max().unwrap_or(4).max(5);
        let mut s = format!("{:>w$} |", "true\\pred");
        for l in &self.labels {
            s.push_str(&format!(" {:>w$}", l));
        }
        s.push('\n');
        for (i, row) in self.matrix.iter().enumerate() {
            s.push_str(&format!("{:>w$} |", self.labels[i]));
            for c in row {
                s.push_str(&format!(" {c:>w$}"));
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_ranks_labels_and_counts_the_known_truths() {
        let c = ZeroShotClassifier {
            labels: vec!["cat".into(), "dog".into(), "fish".into()],
            rows: vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0],
            dim: 2,
        };
        let images = ImageEmbeddings {
            paths: vec!["pets/cat/1.jpg".into(), "pets/dog/2.jpg".into(), "x/3.jpg".into()],
            // Closest to cat; to dog; to fish.
            rows: vec![0.8, 0.6, 0.6, 0.8, -0.9, 0.1],
            dim: 2,
            skipped: vec![],
        };
        let labels = c.labels.clone();
        let scores = c.classify(&images, 10.0, None, 2, |p| true_label(p, &labels, None));
        let predicted: Vec<usize> = scores.predictions.iter().map(|p| p.predicted).collect();
        assert_eq!(predicted, [0, 1, 2]);
        let truths: Vec<Option<usize>> = scores.predictions.iter().map(|p| p.truth).collect();
        assert_eq!(truths, [Some(0), Some(1), None], "a folder that is no label is unknown");
        let first = &scores.predictions[0];
        assert_eq!(first.top.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(), ["cat", "dog"]);
        let p = c.probabilities(&images.rows[..2], 10.0);
        assert_eq!((first.top[0].1, first.top[1].1), (p[0], p[1]));
        assert_eq!((scores.confusion.total(), scores.accuracy()), (2, Some(1.0)));
        // Ground truth by file name; it says 1.jpg is a dog: one of two right.
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("truth.csv");
        std::fs::write(&csv, "image,label\n1.jpg,dog\n2.jpg,dog\n3.jpg,bird\n").unwrap();
        let truth = ImageLabels::read(&csv, "label").unwrap();
        let scores = c.classify(&images, 10.0, None, 1, |p| true_label(p, &labels, Some(&truth)));
        assert_eq!(scores.confusion.matrix[1], [1, 1, 0]);
        assert_eq!(scores.accuracy(), Some(0.5));
        assert_eq!(scores.predictions[2].top.len(), 1);
        let none = c.classify(&images, 10.0, None, 1, |_| None);
        assert_eq!(none.accuracy(), None);
    }

    #[test]
    fn templates_need_a_slot() {
        assert_eq!(
            parse_templates("# prompts\na photo of a {}.\n\nthe {}\n", "t.txt").unwrap().len(),
            2
        );
        let err = parse_templates("a photo\n", "t.txt").unwrap_err().to_string();
        assert!(err.contains("t.txt:1"), "{err}");
    }

    #[test]
    fn probabilities_and_confusion() {
        let c = ZeroShotClassifier {
            labels: vec!["x".into(), "y".into()],
            rows: vec![1.0, 0.0, 0.0, 1.0],
            dim: 2,
        };
        let p = c.probabilities(&[0.8, 0.6], 10.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6 && p[0] > 0.8);
        assert_eq!(c.predict(&[0.1, 0.9]), 1);
        // Sigmoid (SigLIP) probabilities: σ(10·0.8 − 5) and σ(10·0.6 − 5), independent.
        let p = c.probabilities_with(&[0.8, 0.6], 10.0, Some(-5.0));
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert!((p[0] - sigmoid(3.0)).abs() < 1e-6 && (p[1] - sigmoid(1.0)).abs() < 1e-6, "{p:?}");
        let mut m = Confusion::new(&c.labels);
        m.add(0, 0);
        m.add(0, 1);
        m.add(1, 1);
        assert!((m.accuracy() - 2.0 / 3.0).abs() < 1e-12);
        assert!(m.table().contains("true\\pred"));
    }
}
