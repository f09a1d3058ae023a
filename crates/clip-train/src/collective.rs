//! What the replicas of a data-parallel run exchange, behind a trait of this crate: sums over
//! replicas, and the gathered rows built from them. The engine is burn's (`burn-collective`,
//! its local server: one thread per device, tensors moved between devices by the backend);
//! burn marks it experimental and dropped it from its main branch after 0.21, so nothing else
//! in the trainer names it.

use std::ops::Range;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::error::{Result, TrainError};

/// Sums over the replicas of a run; every replica calls each operation, in the same order, with
/// tensors of the same shape.
pub trait Collective<B: Backend> {
    /// This replica's place, `0..world()`; replica 0 writes the run's files.
    fn rank(&self) -> usize;
    /// How many replicas train.
    fn world(&self) -> usize;
    /// The element-wise sum of `tensor` over all replicas.
    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>>;
    /// Time spent inside collective operations since the last call (waiting for the slowest
    /// replica included).
    fn take_comm_time(&self) -> Duration;
}

/// Rows `rows` of a `[total, d]` matrix from this replica, the others' rows from theirs: every
/// replica gets the whole matrix. An all-gather built on the sum (zeros outside a replica's
/// rows), so replicas may hold different numbers of rows.
pub fn all_gather_rows<B: Backend>(
    comm: &dyn Collective<B>,
    local: Tensor<B, 2>,
    rows: Range<usize>,
    total: usize,
) -> Result<Tensor<B, 2>> {
    let [n, d] = local.dims();
    debug_assert_eq!(n, rows.len());
    let placed = Tensor::<B, 2>::zeros([total, d], &local.device()).slice_assign(rows, local);
    Ok(comm.all_reduce_sum(placed.reshape([total * d]))?.reshape([total, d]))
}

/// A replica registered with burn-collective's local server (peers are threads of this process,
/// one per device).
pub struct BurnCollective<B: Backend> {
    peer: PeerId,
    rank: usize,
    world: usize,
    comm: std::cell::Cell<Duration>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend> BurnCollective<B> {
    /// Forgets every earlier registration of this backend's local server: call once, before the
    /// replicas of a run register.
    pub fn reset() {
        burn_collective::reset_collective::<B>();
    }

    /// Registers replica `rank` of `world` on `device`; returns once every replica has
    /// registered.
    pub fn register(rank: usize, world: usize, device: &B::Device) -> Result<Self> {
        let peer = PeerId::from(rank as u32);
        let config = CollectiveConfig::default().with_num_devices(world);
        burn_collective::register::<B>(peer, device.clone(), config).map_err(|e| {
            TrainError::Collective { rank, message: format!("registering failed: {e:?}") }
        })?;
        Ok(Self { peer, rank, world, comm: Default::default(), _backend: std::marker::PhantomData })
    }
}

impl<B: Backend> Collective<B> for BurnCollective<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let started = Instant::now();
        let summed = burn_collective::all_reduce::<B>(
            self.peer,
            tensor.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|e| TrainError::Collective {
            rank: self.rank,
            message: format!("all-reduce failed: {e:?}"),
        })?;
        self.comm.set(self.comm.get() + started.elapsed());
        Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
    }

    fn take_comm_time(&self) -> Duration {
        self.comm.take()
    }
}

impl<B: Backend> Drop for BurnCollective<B> {
    fn drop(&mut self) {
        // Unregisters; an error here (the server already reset) leaves nothing to clean.
        let _ = burn_collective::finish_collective::<B>(self.peer);
    }
}
