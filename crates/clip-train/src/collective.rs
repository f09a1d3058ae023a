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

/// Several machines training together: each node's devices are summed by burn-collective's
/// local level, then the nodes' sums by [`NodeLink`](crate::nodes::NodeLink) (node 0 listening
/// at the coordinator's address), and the result handed back to each node's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub nodes: usize,
    pub node_rank: usize,
    /// `HOST:PORT` of node 0.
    pub coordinator: String,
}

impl Cluster {
    /// The cluster `train` describes (None for one machine).
    pub fn from_spec(t: &crate::config::TrainSpec) -> Option<Self> {
        if t.nodes <= 1 {
            return None;
        }
        Some(Self { nodes: t.nodes, node_rank: t.node_rank, coordinator: t.coordinator.clone()? })
    }

    /// The coordinator's port.
    pub fn port(&self) -> Option<u16> {
        self.coordinator.rsplit_once(':')?.1.parse().ok()
    }
}

/// A replica registered with burn-collective's local server (peers are threads of this process,
/// one per device); this node's first replica also holds the link to the other nodes of a
/// [`Cluster`].
pub struct BurnCollective<B: Backend> {
    peer: PeerId,
    rank: usize,
    world: usize,
    /// Replicas on this node.
    local: usize,
    link: Option<std::cell::RefCell<crate::nodes::NodeLink>>,
    comm: std::cell::Cell<Duration>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend> BurnCollective<B> {
    /// Forgets every earlier registration of this backend's local server: call once, before the
    /// replicas of a run register.
    pub fn reset() {
        burn_collective::reset_collective::<B>();
    }

    /// Registers replica `rank` of `world` on `device` (one machine); returns once every replica
    /// has registered.
    pub fn register(rank: usize, world: usize, device: &B::Device) -> Result<Self> {
        Self::register_in(rank, world, world, device, None)
    }

    /// Registers replica `rank` (numbered across all nodes) of `world`, one of `local` on this
    /// node, in `cluster` when several machines train; this node's first replica connects to the
    /// other nodes (node 0's waits for all of them).
    pub fn register_in(
        rank: usize,
        world: usize,
        local: usize,
        device: &B::Device,
        cluster: Option<&Cluster>,
    ) -> Result<Self> {
        let local_rank = rank % local;
        let peer = PeerId::from(local_rank as u32);
        let config = CollectiveConfig::default().with_num_devices(local);
        burn_collective::register::<B>(peer, device.clone(), config).map_err(|e| {
            TrainError::Collective { rank, message: format!("registering failed: {e:?}") }
        })?;
        let link = match cluster {
            Some(c) if local_rank == 0 => {
                Some(std::cell::RefCell::new(crate::nodes::NodeLink::connect(c)?))
            }
            _ => None,
        };
        Ok(Self {
            peer,
            rank,
            world,
            local,
            link,
            comm: Default::default(),
            _backend: std::marker::PhantomData,
        })
    }
}

impl<B: Backend> BurnCollective<B> {
    /// The element-wise sum of host values over the nodes, from each node's first replica (the
    /// others' devices take no part): `values` itself on one machine.
    pub fn sum_between_nodes(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        match &self.link {
            Some(link) => link.borrow_mut().all_reduce_sum(values),
            None => Ok(values),
        }
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
        let failed = |what: &str, e: &dyn std::fmt::Debug| TrainError::Collective {
            rank: self.rank,
            message: format!("{what} failed: {e:?}"),
        };
        let device = tensor.device();
        let mut sum = tensor;
        if self.local > 1 {
            let primitive = burn_collective::all_reduce::<B>(
                self.peer,
                sum.into_primitive().tensor(),
                ReduceOperation::Sum,
            )
            .map_err(|e| failed("all-reduce", &e))?;
            sum = Tensor::from_primitive(TensorPrimitive::Float(primitive));
        }
        if self.world > self.local {
            // This node's sum goes to the other nodes; their sum comes back to every device.
            let mine = match &self.link {
                Some(link) => {
                    let values: Vec<f32> = sum
                        .into_data()
                        .convert::<f32>()
                        .to_vec()
                        .map_err(|e| failed("reading", &e))?;
                    let total = link.borrow_mut().all_reduce_sum(values)?;
                    let n = total.len();
                    Some(Tensor::<B, 1>::from_data(
                        burn::tensor::TensorData::new(total, [n]),
                        &device,
                    ))
                }
                None => None,
            };
            sum = if self.local > 1 {
                let primitive = burn_collective::broadcast::<B>(
                    self.peer,
                    mine.map(|t| t.into_primitive().tensor()),
                )
                .map_err(|e| failed("broadcast", &e))?;
                Tensor::from_primitive(TensorPrimitive::Float(primitive))
            } else {
                mine.expect("a node's only replica holds its link")
            };
        }
        self.comm.set(self.comm.get() + started.elapsed());
        Ok(sum)
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
