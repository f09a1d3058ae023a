//! A multi-threaded batch loader with bounded memory and a reproducible order.
//!
//! burn's `DataLoader` lets workers queue up to 100 batches ahead (about 1.9 GB of 224-pixel
//! images at batch 32) and cannot report a broken image without panicking. This loader:
//! - shuffles with a permutation that is a pure function of (seed, epoch), so a resumed run can
//!   restart at any batch of any epoch and see exactly the batches it would have seen;
//! - yields batches in order whatever the thread timing (a reorder window);
//! - never holds more than `prefetch_batches + num_workers` batches at once;
//! - returns errors (naming the file) as items instead of panicking.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::batch::{ExamplePipeline, HostBatch};
use crate::dataset::PairDataset;
use crate::error::{DataError, Result};

/// How batches are drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Threads building batches; 0 builds them on the caller's thread.
    pub num_workers: usize,
    /// Finished batches allowed to wait for the consumer.
    pub prefetch_batches: usize,
    pub shuffle: bool,
    pub seed: u64,
    /// Drop the last, smaller batch of an epoch.
    pub drop_last: bool,
}

impl LoaderConfig {
    /// The most batches alive at once: waiting for the consumer or being built.
    pub fn max_batches_in_memory(&self) -> usize {
        self.prefetch_batches.max(1) + self.num_workers
    }
}

/// Loads the batches of a [`PairDataset`] epoch by epoch.
#[derive(Clone)]
pub struct ClipLoader {
    pairs: Arc<PairDataset>,
    pipeline: Arc<ExamplePipeline>,
    config: LoaderConfig,
}

impl ClipLoader {
    pub fn new(pairs: PairDataset, pipeline: ExamplePipeline, config: LoaderConfig) -> Self {
        assert!(config.batch_size > 0, "batch_size must be positive");
        Self { pairs: Arc::new(pairs), pipeline: Arc::new(pipeline), config }
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    pub fn dataset(&self) -> &PairDataset {
        &self.pairs
    }

    pub fn pipeline(&self) -> &ExamplePipeline {
        &self.pipeline
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.pairs.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The order in which epoch `epoch` visits the dataset's items.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.pairs.len()).collect();
        if self.config.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
            rng.set_stream(epoch as u64 + 1);
            order.shuffle(&mut rng);
        }
        order
    }

    /// Builds batch `index` of an epoch whose order is given, on the calling thread.
    pub fn build_batch(&self, epoch: usize, order: &[usize], index: usize) -> Result<HostBatch> {
        build_batch(&self.pairs, &self.pipeline, self.config.batch_size, epoch, order, index)
    }

    /// Iterates the batches of `epoch` from its first batch.
    pub fn epoch(&self, epoch: usize) -> EpochBatches {
        self.epoch_from(epoch, 0)
    }

    /// Iterates the batches of `epoch` starting at batch `start` (to resume mid-epoch).
    pub fn epoch_from(&self, epoch: usize, start: usize) -> EpochBatches {
        let order = Arc::new(self.order(epoch));
        let end = self.num_batches();
        let start = start.min(end);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_claim: start,
                next_yield: start,
                ready: BTreeMap::new(),
                stop: false,
                max_in_flight: 0,
            }),
            wake: Condvar::new(),
        });
        let capacity = self.config.max_batches_in_memory();
        let workers = (0..self.config.num_workers)
            .map(|w| {
                let (pairs, pipeline, order, shared) =
                    (self.pairs.clone(), self.pipeline.clone(), order.clone(), shared.clone());
                let batch_size = self.config.batch_size;
                std::thread::Builder::new()
                    .name(format!("clip-loader-{w}"))
                    .spawn(move || {
                        worker(&shared, capacity, end, |i| {
                            build_batch(&pairs, &pipeline, batch_size, epoch, &order, i)
                        })
                    })
                    .expect("spawn loader thread")
            })
            .collect();
        EpochBatches {
            loader: self.clone(),
            epoch,
            order,
            end,
            shared,
            workers,
            next_inline: start,
        }
    }
}

fn build_batch(
    pairs: &PairDataset,
    pipeline: &ExamplePipeline,
    batch_size: usize,
    epoch: usize,
    order: &[usize],
    index: usize,
) -> Result<HostBatch> {
    let lo = index * batch_size;
    let hi = (lo + batch_size).min(order.len());
    let items = &order[lo..hi];
    let numel = pipeline.transform.numel();
    let mut images = vec![0.0f32; items.len() * numel];
    let mut tokens = Vec::with_capacity(items.len());
    let mut image_indices = Vec::with_capacity(items.len());
    let mut kept = Vec::with_capacity(items.len());
    let mut skipped = Vec::new();
    for &item in items {
        let pair = pairs.pair_in_epoch(item, epoch).expect("order holds valid items");
        let row = tokens.len();
        match pipeline.example_into(&pair, epoch, item, &mut images[row * numel..(row + 1) * numel])
        {
            Ok(ids) => {
                tokens.push(ids);
                image_indices.push(pair.image_index);
                kept.push(item);
            }
            Err(
                e @ (DataError::Io { .. }
                | DataError::ImageDecode { .. }
                | DataError::ImageResize { .. }),
            ) if pipeline.skip_unreadable => {
                skipped.push((pair.image_path.clone(), e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    if tokens.is_empty() && !items.is_empty() {
        return Err(DataError::Worker {
            batch: index,
            message: format!(
                "no image of this batch could be read; first: {}",
                skipped.first().map_or(String::new(), |(_, e)| e.clone())
            ),
        });
    }
    images.truncate(tokens.len() * numel);
    let mut batch = HostBatch::collate(
        images,
        pipeline.transform.size as usize,
        tokens,
        pipeline.padding(),
        image_indices,
        kept,
    );
    batch.skipped = skipped;
    Ok(batch)
}

struct State {
    next_claim: usize,
    next_yield: usize,
    ready: BTreeMap<usize, Result<HostBatch>>,
    stop: bool,
    max_in_flight: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

fn worker(
    shared: &Shared,
    capacity: usize,
    end: usize,
    build: impl Fn(usize) -> Result<HostBatch>,
) {
    loop {
        let index = {
            let mut s = shared.state.lock().expect("loader lock");
            loop {
                if s.stop || s.next_claim >= end {
                    return;
                }
                if s.next_claim < s.next_yield + capacity {
                    break;
                }
                s = shared.wake.wait(s).expect("loader lock");
            }
            let i = s.next_claim;
            s.next_claim += 1;
            s.max_in_flight = s.max_in_flight.max(s.next_claim - s.next_yield);
            i
        };
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| build(index))).unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(DataError::Worker { batch: index, message })
            });
        let mut s = shared.state.lock().expect("loader lock");
        s.ready.insert(index, result);
        shared.wake.notify_all();
    }
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochBatches {
    loader: ClipLoader,
    epoch: usize,
    order: Arc<Vec<usize>>,
    end: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    next_inline: usize,
}

impl EpochBatches {
    /// The most batches that were alive at once so far (claimed by a worker, not yet yielded).
    pub fn max_in_flight(&self) -> usize {
        self.shared.state.lock().expect("loader lock").max_in_flight
    }

    /// Index of the next batch this iterator yields.
    pub fn position(&self) -> usize {
        if self.workers.is_empty() {
            self.next_inline
        } else {
            self.shared.state.lock().expect("loader lock").next_yield
        }
    }
}

impl Iterator for EpochBatches {
    type Item = Result<HostBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.workers.is_empty() {
            if self.next_inline >= self.end {
                return None;
            }
            let i = self.next_inline;
            self.next_inline += 1;
            return Some(self.loader.build_batch(self.epoch, &self.order, i));
        }
        let mut s = self.shared.state.lock().expect("loader lock");
        if s.next_yield >= self.end {
            return None;
        }
        loop {
            let want = s.next_yield;
            if let Some(batch) = s.ready.remove(&want) {
                s.next_yield += 1;
                self.shared.wake.notify_all();
                return Some(batch);
            }
            s = self.shared.wake.wait(s).expect("loader lock");
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end - self.position();
        (left, Some(left))
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.stop = true;
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
