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

use crate::collective::{BurnCollective, Cluster, Collective};
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
    /// The machines training together, when there are several.
    pub cluster: Option<Cluster>,
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
    Step {
        batch: HostBatch,
        place: ReplicaRows,
        step: usize,
        lr_factor: f64,
    },
    /// Take part in node 0's announcement of the next step (several machines).
    Control,
}

/// What node 0 tells every node before each step (several machines): whether to go on, which
/// batch of which epoch, the learning-rate factor and the step number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOrder {
    pub epoch: usize,
    /// The batch's place in its epoch.
    pub batch: usize,
    pub lr_factor: f64,
    pub step: usize,
}

const ORDER_LEN: usize = 5;

impl StepOrder {
    fn encode(order: Option<StepOrder>) -> [f32; ORDER_LEN] {
        match order {
            Some(o) => [1.0, o.epoch as f32, o.batch as f32, o.lr_factor as f32, o.step as f32],
            None => [0.0; ORDER_LEN],
        }
    }

    fn decode(v: [f32; ORDER_LEN]) -> Option<StepOrder> {
        (v[0] > 0.5).then(|| StepOrder {
            epoch: v[1] as usize,
            batch: v[2] as usize,
            lr_factor: v[3] as f64,
            step: v[4] as usize,
        })
    }
}

/// The replicas other than replica 0, and replica 0's own link to them.
pub struct Replicas<B: AutodiffBackend> {
    plan: ReplicaPlan,
    comm: BurnCollective<B::InnerBackend>,
    workers: Vec<Worker>,
    /// This node's first replica's number among all nodes' replicas, and how many there are.
    first_rank: usize,
    world: usize,
    /// This node's first device (replica 0's).
    device: B::Device,
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
        let local = devices.len();
        let (first_rank, world) = match &plan.cluster {
            Some(c) => (c.node_rank * local, c.nodes * local),
            None => (0, local),
        };
        BurnCollective::<B::InnerBackend>::reset();
        let mut workers = Vec::with_capacity(local - 1);
        for (i, device) in devices.iter().enumerate().skip(1) {
            let rank = first_rank + i;
            let (work_tx, work_rx) = mpsc::channel();
            let (done_tx, done_rx) = mpsc::channel();
            let (model, device, plan) = (model.clone(), device.clone(), plan.clone());
            let ranks = Ranks { rank, world, local };
            let thread = std::thread::Builder::new()
                .name(format!("replica-{rank}"))
                .spawn(move || replica::<B>(ranks, model, device, plan, work_rx, done_tx))
                .map_err(|e| TrainError::Collective {
                    rank,
                    message: format!("could not start its thread: {e}"),
                })?;
            workers.push(Worker { work: Some(work_tx), done: done_rx, thread: Some(thread) });
        }
        let comm = BurnCollective::register_in(
            first_rank,
            world,
            local,
            &devices[0],
            plan.cluster.as_ref(),
        )?;
        let device = devices[0].clone();
        Ok(Self { plan, comm, workers, first_rank, world, device, started: None })
    }

    /// Replicas on all nodes.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Whether several machines train (and so take their orders from node 0).
    pub fn clustered(&self) -> bool {
        self.plan.cluster.is_some()
    }

    /// Node 0 announces the next step (`Some`) or the end (`None`) to every node; the other nodes
    /// pass `None` and learn what node 0 said.
    pub fn exchange_order(&mut self, order: Option<StepOrder>) -> Result<Option<StepOrder>> {
        for (i, worker) in self.workers.iter().enumerate() {
            if worker.work.as_ref().is_none_or(|tx| tx.send(Work::Control).is_err()) {
                return Err(stopped(self.first_rank + i + 1));
            }
        }
        let mine = if self.first_rank == 0 { order } else { None };
        exchange(&self.comm, mine, &self.device)
    }

    /// Hands every other replica of this node its rows of `batch` for `step`; returns this
    /// replica's rows.
    pub fn send(&mut self, batch: &HostBatch, step: usize, lr_factor: f64) -> Result<ReplicaRows> {
        self.started = Some(Instant::now());
        let total = batch.len();
        let shares = shares(total, self.world);
        let first = self.first_rank;
        for (i, worker) in self.workers.iter().enumerate() {
            let rows = shares[first + 1 + i].clone();
            let place = ReplicaRows { rows: rows.clone(), total };
            let work = Work::Step { batch: batch.rows(rows), place, step, lr_factor };
            let sent = worker.work.as_ref().is_some_and(|tx| tx.send(work).is_ok());
            if !sent {
                return Err(stopped(first + 1 + i));
            }
        }
        Ok(ReplicaRows { rows: shares[first].clone(), total })
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
        let (plan, rank) = (&self.plan, self.first_rank);
        let mut reseed = |micro: usize| B::seed(device, plan.dropout_seed(step, rank, micro));
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

    /// Waits for the other replicas to finish the step; every replica's figures (all nodes'),
    /// replica 0's first (`rows` pairs on this node's first replica).
    pub fn collect(&mut self, rows: usize) -> Result<Vec<ReplicaStep>> {
        let seconds = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let mut steps = vec![ReplicaStep {
            samples_per_s: rows as f64 / seconds.max(1e-9),
            comm_s: self.comm.take_comm_time().as_secs_f64(),
        }];
        for (i, worker) in self.workers.iter().enumerate() {
            match worker.done.recv() {
                Ok(done) => steps.push(done?),
                Err(_) => return Err(stopped(self.first_rank + i + 1)),
            }
        }
        if self.clustered() {
            // Every node learns every replica's figures (node 0 shows them).
            let mut figures = vec![0f32; 2 * self.world];
            for (i, s) in steps.iter().enumerate() {
                let at = 2 * (self.first_rank + i);
                figures[at] = s.samples_per_s as f32;
                figures[at + 1] = s.comm_s as f32;
            }
            let all = self.comm.sum_between_nodes(figures)?;
            steps = all
                .chunks_exact(2)
                .map(|f| ReplicaStep { samples_per_s: f[0] as f64, comm_s: f[1] as f64 })
                .collect();
        }
        self.started = None;
        Ok(steps)
    }
}

impl<B: AutodiffBackend> Drop for Replicas<B> {
    fn drop(&mut self) {
        // A step left unfinished (replica 0 failed inside it) may hold the others in a collective
        // operation for good: leave those threads rather than wait for them.
        if self.started.is_some() {
            for worker in &mut self.workers {
                worker.work.take();
            }
            return;
        }
        // Node 0 tells the other nodes that training is over (however it ended).
        if self.clustered() && self.first_rank == 0 {
            let _ = self.exchange_order(None);
        }
        for worker in &mut self.workers {
            worker.work.take();
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

/// A replica's number among all nodes' replicas, how many there are, and how many on its node.
struct Ranks {
    rank: usize,
    world: usize,
    local: usize,
}

/// Node 0's order as every replica learns it: one sum over all replicas, node 0's replica 0
/// contributing the order and everyone else zeros.
fn exchange<IB: burn::tensor::backend::Backend>(
    comm: &dyn Collective<IB>,
    order: Option<StepOrder>,
    device: &IB::Device,
) -> Result<Option<StepOrder>> {
    let values = burn::tensor::Tensor::<IB, 1>::from_floats(StepOrder::encode(order), device);
    let summed: Vec<f32> = comm
        .all_reduce_sum(values)?
        .into_data()
        .to_vec()
        .map_err(|e| TrainError::Other(format!("step order: {e:?}")))?;
    let mut v = [0f32; ORDER_LEN];
    v.copy_from_slice(&summed[..ORDER_LEN]);
    Ok(StepOrder::decode(v))
}

/// The loop of replica `rank`: a step per batch share received, until the channel closes.
fn replica<B: AutodiffBackend>(
    Ranks { rank, world, local }: Ranks,
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
        let comm = BurnCollective::<B::InnerBackend>::register_in(
            rank,
            world,
            local,
            &device,
            plan.cluster.as_ref(),
        )?;
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
    for order in work {
        let (batch, place, step, lr_factor) = match order {
            Work::Step { batch, place, step, lr_factor } => (batch, place, step, lr_factor),
            Work::Control => {
                if let Err(e) = exchange(&comm, None, &device) {
                    let _ = done.send(Err(e));
                    return;
                }
                continue;
            }
        };
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
        let (stepped, _) = optim.step(model, out.grads, lr_factor);
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
