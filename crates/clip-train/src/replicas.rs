//! Data-parallel training in one process: one replica per device, each on its own thread with
//! its own copy of the model and optimizer. Replica 0 is the trainer itself (it loads the data,
//! validates, writes every file); the others, started here, take their share of each batch,
//! embed it, join the gathered loss, sum gradients with everyone and apply the same optimizer
//! step, so every replica holds the same weights after every step.
//!
//! Batch-norm running statistics stay per replica (replica 0's are the ones saved), as with
//! PyTorch's DistributedDataParallel, which broadcasts replica 0's buffers: training-mode
//! normalization uses each replica's batch statistics, as it uses each micro-batch's.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use clip_data::HostBatch;
use clip_model::ClipModel;
use serde::{Deserialize, Serialize};

use crate::collective::{BurnCollective, Collective};
use crate::config::TrainSpec;
use crate::error::{Result, TrainError};
use crate::optim::{ClipOptimizer, LossScaler};
use crate::step::{
    forward_backward_replica, micro_batch_ranges, FrozenFeatures, ReplicaLoss, ReplicaRows,
};

/// One replica's share of a step, for the dashboard and the metrics file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStep {
    /// Pairs this replica embedded per second of its step (forward, backward, exchanges and
    /// optimizer update).
    pub samples_per_s: f64,
    /// Seconds of the step spent in collective operations (waiting for the others included).
    pub comm_s: f64,
}

/// What a replica needs to take part in training, the same for all of them.
#[derive(Debug, Clone)]
pub struct ReplicaPlan {
    pub spec: TrainSpec,
    pub frozen_text: bool,
    pub frozen_image: bool,
    pub augmented: bool,
    /// The checkpoint every replica's optimizer state is loaded from (a resumed run).
    pub resume_from: Option<PathBuf>,
    pub scaler: LossScaler,
}

impl ReplicaPlan {
    pub fn loss(&self) -> ReplicaLoss {
        if self.spec.local_loss {
            ReplicaLoss::Local
        } else {
            ReplicaLoss::Global
        }
    }

    /// The seed of replica `rank`'s micro-batch `micro` at `step` (the micro-batch's place among
    /// all replicas' micro-batches: with one device and that many micro-batches, the same seed).
    pub fn dropout_seed(&self, step: usize, rank: usize, micro: usize) -> u64 {
        crate::trainer::dropout_seed(self.spec.seed, step, rank * self.spec.micro_batches + micro)
    }
}

enum Work {
    Step { batch: HostBatch, place: ReplicaRows, step: usize, lr_factor: f64 },
}

/// The replicas other than replica 0, and replica 0's own link to them.
pub struct Replicas<B: AutodiffBackend> {
    plan: ReplicaPlan,
    comm: BurnCollective<B::InnerBackend>,
    workers: Vec<Worker>,
    /// When the step in flight was handed out (None between steps).
    started: Option<Instant>,
}

struct Worker {
    work: Option<Sender<Work>>,
    done: Receiver<Result<ReplicaStep>>,
    thread: Option<JoinHandle<()>>,
}

impl<B: AutodiffBackend> Replicas<B>
where
    B::Device: 'static,
{
    /// Starts a replica on each of `devices[1..]` with a copy of `model` (replica 0, on
    /// `devices[0]`, is the caller's) and registers them all with the collective engine.
    pub fn start(model: &ClipModel<B>, devices: &[B::Device], plan: ReplicaPlan) -> Result<Self> {
        let world = devices.len();
        BurnCollective::<B::InnerBackend>::reset();
        let mut workers = Vec::with_capacity(world - 1);
        for (rank, device) in devices.iter().enumerate().skip(1) {
            let (work_tx, work_rx) = mpsc::channel();
            let (done_tx, done_rx) = mpsc::channel();
            let (model, device, plan) = (model.clone(), device.clone(), plan.clone());
            let thread = std::thread::Builder::new()
                .name(format!("replica-{rank}"))
                .spawn(move || replica::<B>(rank, world, model, device, plan, work_rx, done_tx))
                .map_err(|e| TrainError::Collective {
                    rank,
                    message: format!("could not start its thread: {e}"),
                })?;
            workers.push(Worker { work: Some(work_tx), done: done_rx, thread: Some(thread) });
        }
        let comm = BurnCollective::register(0, world, &devices[0])?;
        Ok(Self { plan, comm, workers, started: None })
    }

    pub fn world(&self) -> usize {
        self.workers.len() + 1
    }

    /// Hands every other replica its rows of `batch` for `step`; returns replica 0's rows.
    pub fn send(&mut self, batch: &HostBatch, step: usize, lr_factor: f64) -> Result<ReplicaRows> {
        self.started = Some(Instant::now());
        let total = batch.len();
        let shares = shares(total, self.world());
        for (rank, (worker, rows)) in self.workers.iter().zip(&shares[1..]).enumerate() {
            let place = ReplicaRows { rows: rows.clone(), total };
            let work = Work::Step { batch: batch.rows(rows.clone()), place, step, lr_factor };
            let sent = worker.work.as_ref().is_some_and(|tx| tx.send(work).is_ok());
            if !sent {
                return Err(stopped(rank + 1));
            }
        }
        Ok(ReplicaRows { rows: shares[0].clone(), total })
    }

    /// Replica 0's step: its share's forward and backward passes, joined with the others'.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &mut self,
        model: &ClipModel<B>,
        frozen: &mut FrozenFeatures,
        batch: HostBatch,
        place: &ReplicaRows,
        loss_factor: f64,
        step: usize,
        device: &B::Device,
    ) -> Result<crate::step::StepOutcome> {
        let inputs = frozen.inputs(model, self.plan.spec.precision, batch, device);
        let plan = &self.plan;
        let mut reseed = |micro: usize| B::seed(device, plan.dropout_seed(step, 0, micro));
        forward_backward_replica(
            model,
            &inputs,
            place,
            plan.spec.micro_batches,
            loss_factor,
            plan.loss(),
            &mut reseed,
            &self.comm,
        )
    }

    /// Waits for the other replicas to finish the step; every replica's figures, replica 0's
    /// first (`rows` pairs on replica 0).
    pub fn collect(&mut self, rows: usize) -> Result<Vec<ReplicaStep>> {
        let seconds = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let mut steps = vec![ReplicaStep {
            samples_per_s: rows as f64 / seconds.max(1e-9),
            comm_s: self.comm.take_comm_time().as_secs_f64(),
        }];
        for (i, worker) in self.workers.iter().enumerate() {
            match worker.done.recv() {
                Ok(done) => steps.push(done?),
                Err(_) => return Err(stopped(i + 1)),
            }
        }
        self.started = None;
        Ok(steps)
    }
}

impl<B: AutodiffBackend> Drop for Replicas<B> {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            worker.work.take();
        }
        // A step left unfinished (replica 0 failed inside it) may hold the others in a collective
        // operation for good: leave those threads rather than wait for them.
        if self.started.is_some() {
            return;
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Each replica's rows of a `total`-pair batch: contiguous, sizes differing by at most one.
pub fn shares(total: usize, world: usize) -> Vec<Range<usize>> {
    micro_batch_ranges(total, world)
}

fn stopped(rank: usize) -> TrainError {
    TrainError::Collective { rank, message: "the replica stopped (see the error above)".into() }
}

/// The loop of replica `rank`: a step per batch share received, until the channel closes.
fn replica<B: AutodiffBackend>(
    rank: usize,
    world: usize,
    model: ClipModel<B>,
    device: B::Device,
    plan: ReplicaPlan,
    work: Receiver<Work>,
    done: Sender<Result<ReplicaStep>>,
) {
    let setup = || -> Result<_> {
        let model = model.fork(&device);
        let mut optim = ClipOptimizer::<B>::new(&plan.spec);
        if let Some(dir) = &plan.resume_from {
            optim = optim.load(dir, &device)?;
        }
        optim.scaler = plan.scaler.clone();
        let comm = BurnCollective::<B::InnerBackend>::register(rank, world, &device)?;
        Ok((model, optim, comm))
    };
    let (mut model, mut optim, comm) = match setup() {
        Ok(parts) => parts,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    let spec = &plan.spec;
    let mut frozen = FrozenFeatures::new(plan.frozen_text, plan.frozen_image, plan.augmented);
    for Work::Step { batch, place, step, lr_factor } in work {
        let started = Instant::now();
        let rows = batch.len();
        let inputs = frozen.inputs(&model, spec.precision, batch, &device);
        let mut reseed = |micro: usize| B::seed(&device, plan.dropout_seed(step, rank, micro));
        let out = forward_backward_replica(
            &model,
            &inputs,
            &place,
            spec.micro_batches,
            optim.scaler.factor(),
            plan.loss(),
            &mut reseed,
            &comm,
        );
        drop(inputs);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let _ = done.send(Err(e));
                return;
            }
        };
        let (stepped, _) = optim.step(model, out.grads, lr_factor, false);
        model = stepped;
        let report = ReplicaStep {
            samples_per_s: rows as f64 / started.elapsed().as_secs_f64().max(1e-9),
            comm_s: comm.take_comm_time().as_secs_f64(),
        };
        if done.send(Ok(report)).is_err() {
            return;
        }
    }
}
