//! An index and the model that made it, loaded once and queried many times: what `clip search`
//! does for one query and `clip serve` does for each request (text → image, image → image).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use clip_data::imaging::View;
use serde::Serialize;

use crate::card::LoadedModel;
use crate::error::{InferError, Result};
use crate::index::EmbeddingIndex;
use crate::search::search;

/// One result of a query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Match {
    /// 1-based.
    pub rank: usize,
    /// Cosine similarity.
    pub score: f32,
    /// Row of the index.
    pub index: usize,
    pub path: PathBuf,
}

/// A loaded index with the model that embeds its queries.
pub struct SearchService<B: Backend> {
    pub model: LoadedModel<B>,
    pub index: EmbeddingIndex,
    device: B::Device,
    threads: usize,
}

impl<B: Backend> SearchService<B> {
    /// Loads the index at `index_dir` and its model: the run recorded in the index, or
    /// `checkpoint`, which must hold the same model (an index is only searchable with the model
    /// that made it).
    pub fn open(index_dir: &Path, checkpoint: Option<&Path>, device: &B::Device) -> Result<Self> {
        let index = EmbeddingIndex::load(index_dir)?;
        let run = checkpoint.map(Path::to_path_buf).unwrap_or_else(|| index.meta.run_dir.clone());
        let model = LoadedModel::<B>::from_run(&run, device)?;
        if !model.made(&index.meta.model_id) {
            return Err(InferError::Index {
                path: index_dir.into(),
                message: format!(
                    "the index was built by model {} ({}), but {} holds model {}; embed again with this model",
                    index.meta.model_id,
                    index.meta.run_dir.display(),
                    run.display(),
                    model.id
                ),
            });
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self { model, index, device: device.clone(), threads })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The normalized embedding of a text query.
    pub fn embed_text(&self, query: &str) -> Result<Vec<f32>> {
        if query.trim().is_empty() {
            return Err(InferError::Input("the text query is empty".into()));
        }
        Ok(self.model.embed_texts(&[query.to_string()], &self.device)?.0)
    }

    /// The normalized embedding of an encoded image (JPEG, PNG, WebP); `name` appears in errors.
    pub fn embed_image_bytes(&self, bytes: Vec<u8>, name: &str) -> Result<Vec<f32>> {
        let img = clip_data::imaging::decode_rgb_bytes(bytes, Path::new(name))?;
        let transform = &self.model.transform;
        let mut pixels = vec![0f32; transform.numel()];
        transform
            .apply_into(&img, &View::default(), &mut pixels)
            .map_err(|m| InferError::Input(format!("{name}: {m}")))?;
        let size = transform.size as usize;
        let images =
            Tensor::<B, 4>::from_data(TensorData::new(pixels, [1, 3, size, size]), &self.device);
        let mut row: Vec<f32> = self
            .model
            .model
            .encode_image(images)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let dim = row.len();
        crate::embed::normalize_rows(&mut row, dim);
        Ok(row)
    }

    /// The `k` indexed images closest to a normalized query embedding, best first.
    pub fn nearest(&self, query: &[f32], k: usize) -> Result<Vec<Match>> {
        if self.index.is_empty() {
            return Err(InferError::Input("the index is empty, nothing to search".into()));
        }
        if query.len() != self.index.meta.dim {
            return Err(InferError::Input(format!(
                "a query of {} dimensions for an index of {}",
                query.len(),
                self.index.meta.dim
            )));
        }
        let hits = search(&self.index.rows, query, self.index.meta.dim, k, self.threads)
            .pop()
            .unwrap_or_default();
        Ok(hits
            .into_iter()
            .enumerate()
            .map(|(r, h)| Match {
                rank: r + 1,
                score: h.score,
                index: h.index,
                path: self.index.meta.entries[h.index].path.clone(),
            })
            .collect())
    }

    /// Text → image.
    pub fn by_text(&self, query: &str, k: usize) -> Result<Vec<Match>> {
        self.nearest(&self.embed_text(query)?, k)
    }

    /// Image → image.
    pub fn by_image_bytes(&self, bytes: Vec<u8>, name: &str, k: usize) -> Result<Vec<Match>> {
        self.nearest(&self.embed_image_bytes(bytes, name)?, k)
    }

    /// The file of index row `i`.
    pub fn path(&self, i: usize) -> Option<&Path> {
        self.index.meta.entries.get(i).map(|e| e.path.as_path())
    }
}
