//! Zero-shot classification: each label becomes the mean embedding of prompt templates filled
//! with it ("a photo of a {}."), and an image takes the label whose embedding it is closest to.

use burn::tensor::backend::Backend;

use clip_data::CaptionTokenizer;
use clip_model::ClipModel;

use crate::card::LoadedModel;
use crate::error::{InferError, Result};

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
