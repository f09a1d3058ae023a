//! Embedding images and texts with a loaded model, in batches, L2-normalized for cosine search.
//! Images are decoded on worker threads; a file that is not a readable image is skipped and
//! reported, not fatal.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use clip_data::imaging::View;

use clip_data::CaptionTokenizer;
use clip_model::ClipModel;

use crate::card::LoadedModel;

/// File extensions taken as images when listing a folder.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "bmp", "gif"];

/// The image files under `dir` (recursively), sorted.
pub fn list_images(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Embeddings of images, and the files that could not be read.
#[derive(Debug, Clone, Default)]
pub struct ImageEmbeddings {
    /// The images embedded, in input order (skipped ones left out).
    pub paths: Vec<PathBuf>,
    /// `[paths, dim]`, rows L2-normalized.
    pub rows: Vec<f32>,
    pub dim: usize,
    /// Files skipped, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

pub(crate) fn normalize_rows(rows: &mut [f32], dim: usize) {
    for r in rows.chunks_mut(dim) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|v| *v /= n);
    }
}

impl<B: Backend> LoadedModel<B> {
    /// Embeds images, `batch` at a time, decoding on `workers` threads; calls `progress(done, total)`.
    pub fn embed_images(
        &self,
        paths: &[PathBuf],
        batch: usize,
        workers: usize,
        device: &B::Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> ImageEmbeddings {
        let numel = self.transform.numel();
        let size = self.transform.size as usize;
        let mut out = ImageEmbeddings::default();
        for chunk in paths.chunks(batch.max(1)) {
            clip_data::fault::reach("embed.batch");
            // Decode in parallel into one buffer; remember which slots failed.
            let mut pixels = vec![0f32; chunk.len() * numel];
            let mut errors: Vec<Option<String>> = vec![None; chunk.len()];
            let per = chunk.len().div_ceil(workers.max(1));
            std::thread::scope(|s| {
                for ((paths, buf), errs) in chunk
                    .chunks(per)
                    .zip(pixels.chunks_mut(per * numel))
                    .zip(errors.chunks_mut(per))
                {
                    s.spawn(move || {
                        for ((p, slot), e) in
                            paths.iter().zip(buf.chunks_mut(numel)).zip(errs.iter_mut())
                        {
                            if let Err(err) = self.transform.load_into(p, &View::default(), slot) {
                                *e = Some(err.to_string());
                            }
                        }
                    });
                }
            });
            let good: Vec<usize> = (0..chunk.len()).filter(|&i| errors[i].is_none()).collect();
            for (i, e) in errors.into_iter().enumerate() {
                if let Some(e) = e {
                    out.skipped.push((chunk[i].clone(), e));
                }
            }
            if !good.is_empty() {
                let data: Vec<f32> = good
                    .iter()
                    .flat_map(|&i| pixels[i * numel..(i + 1) * numel].iter().copied())
                    .collect();
                let images = Tensor::<B, 4>::from_data(
                    TensorData::new(data, [good.len(), 3, size, size]),
                    device,
                );
                let emb = self.model.encode_image(images);
                out.dim = emb.dims()[1];
                let mut rows: Vec<f32> =
                    emb.into_data().convert::<f32>().to_vec().unwrap_or_default();
                normalize_rows(&mut rows, out.dim);
                out.rows.extend(rows);
                out.paths.extend(good.iter().map(|&i| chunk[i].clone()));
            }
            progress(out.paths.len() + out.skipped.len(), paths.len());
        }
        out
    }

    /// Embeds texts (each tokenized like the training captions): `[texts, dim]`, rows normalized.
    pub fn embed_texts(
        &self,
        texts: &[String],
        device: &B::Device,
    ) -> crate::Result<(Vec<f32>, usize)> {
        embed_texts(&self.model, &self.tokenizer, texts, device)
    }
}

/// Embeds texts with a model and its tokenizer: `[texts, dim]`, rows L2-normalized.
pub fn embed_texts<B: Backend>(
    model: &ClipModel<B>,
    tokenizer: &CaptionTokenizer,
    texts: &[String],
    device: &B::Device,
) -> crate::Result<(Vec<f32>, usize)> {
    let mut all = Vec::new();
    let mut dim = 0;
    for chunk in texts.chunks(256) {
        let ids: Vec<Vec<u32>> =
            chunk.iter().map(|t| tokenizer.encode(t)).collect::<Result<_, _>>()?;
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = vec![tokenizer.pad_id() as i32; chunk.len() * len];
        let mut mask = vec![0i32; chunk.len() * len];
        for (r, row) in ids.iter().enumerate() {
            for (j, &id) in row.iter().enumerate() {
                flat[r * len + j] = id as i32;
                mask[r * len + j] = 1;
            }
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [chunk.len(), len]), device);
        let mask =
            Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [chunk.len(), len]), device);
        let emb = model.encode_text(ids, mask);
        dim = emb.dims()[1];
        let mut rows: Vec<f32> = emb.into_data().convert::<f32>().to_vec().unwrap_or_default();
        normalize_rows(&mut rows, dim);
        all.extend(rows);
    }
    Ok((all, dim))
}
