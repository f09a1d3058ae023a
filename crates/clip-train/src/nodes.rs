//! The level between machines of a multi-machine run, on burn-communication's WebSocket channels
//! (the transport burn-collective's own multi-node level uses). burn-collective 0.21's global
//! all-reduce cannot be used: its nodes' barrier (`global/node/sync.rs`) never clears the list of
//! nodes that reached it (it clears a copy), so every operation after the first waits forever,
//! and on loopback here even the first one did not return. This is a centralized sum: node 0
//! (the hub) listens at the coordinator's address, every other node keeps one channel to it,
//! sends its tensor and receives the sum, added in node order so that every node gets the same
//! bits.

use std::time::{Duration, Instant};

use burn_communication::websocket::{WsClient, WsServer};
use burn_communication::{CommunicationChannel, Message, ProtocolClient, ProtocolServer};

use crate::collective::Cluster;
use crate::error::{Result, TrainError};

/// Floats per message (8 MB): WebSocket servers refuse messages past 64 MiB.
const CHUNK: usize = 2 * 1024 * 1024;

/// How long node 0 waits for the other nodes to connect, and they for node 0 to listen
/// (`CLIP_NODE_TIMEOUT_S` seconds, default 600).
fn connect_timeout() -> Duration {
    let s = std::env::var("CLIP_NODE_TIMEOUT_S").ok().and_then(|v| v.parse().ok());
    Duration::from_secs(s.unwrap_or(600))
}

type HubChannel = <WsServer as ProtocolServer>::Channel;
type SpokeChannel = <WsClient as ProtocolClient>::Channel;

enum Role {
    /// Node 0: a channel to every other node, in node order.
    Hub(Vec<HubChannel>),
    /// Any other node: its channel to node 0.
    Spoke(Box<SpokeChannel>),
}

/// This node's link to the others.
pub struct NodeLink {
    runtime: tokio::runtime::Runtime,
    role: Role,
    node_rank: usize,
}

fn error(node: usize, message: impl std::fmt::Display) -> TrainError {
    TrainError::Collective { rank: node, message: format!("node {node}: {message}") }
}

impl NodeLink {
    /// Node 0 listens at the coordinator's port until every other node has connected; the
    /// others connect to it (retrying while it is not up yet).
    pub fn connect(cluster: &Cluster) -> Result<Self> {
        let me = cluster.node_rank;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| error(me, format!("could not start its network thread: {e}")))?;
        let port = cluster.port().ok_or_else(|| error(me, "the coordinator has no port"))?;
        let deadline = Instant::now() + connect_timeout();
        let role = if me == 0 {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<HubChannel>();
            let server = WsServer::new(port).route("/reduce", move |channel| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(channel);
                }
            });
            runtime.spawn(server.serve(std::future::pending()));
            let others = cluster.nodes - 1;
            let channels = runtime.block_on(async {
                let mut slots: Vec<Option<HubChannel>> = (0..others).map(|_| None).collect();
                while slots.iter().any(Option::is_none) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let missing = || {
                        let m: Vec<String> = slots
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.is_none())
                            .map(|(i, _)| (i + 1).to_string())
                            .collect();
                        m.join(", ")
                    };
                    let mut channel = match tokio::time::timeout(left, rx.recv()).await {
                        Ok(Some(c)) => c,
                        _ => {
                            return Err(error(
                                0,
                                format!("node(s) {} did not connect to port {port} in time", missing()),
                            ))
                        }
                    };
                    // A node's first message is its rank.
                    let rank = match channel.recv().await {
                        Ok(Some(m)) if m.data.len() == 8 => {
                            u64::from_le_bytes(m.data[..8].try_into().expect("8 bytes")) as usize
                        }
                        _ => continue,
                    };
                    if rank == 0 || rank > others || slots[rank - 1].is_some() {
                        return Err(error(0, format!("a second node {rank} connected (is --node-rank unique and below --nodes?)")));
                    }
                    slots[rank - 1] = Some(channel);
                }
                Ok(slots.into_iter().map(|s| s.expect("every slot filled")).collect())
            })?;
            Role::Hub(channels)
        } else {
            let address = format!("ws://{}", cluster.coordinator);
            let channel = runtime.block_on(async {
                loop {
                    let parsed = address.parse().map_err(|e: String| error(me, e))?;
                    if let Some(mut c) = WsClient::connect(parsed, "reduce").await {
                        let hello = Message::new((me as u64).to_le_bytes().to_vec().into());
                        c.send(hello).await.map_err(|e| error(me, format!("{e:?}")))?;
                        return Ok(c);
                    }
                    if Instant::now() > deadline {
                        return Err(error(me, format!("node 0 did not answer at {address}")));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })?;
            Role::Spoke(Box::new(channel))
        };
        Ok(Self { runtime, role, node_rank: me })
    }

    /// The element-wise sum of `values` over all nodes (every node passes the same length).
    pub fn all_reduce_sum(&mut self, mut values: Vec<f32>) -> Result<Vec<f32>> {
        let me = self.node_rank;
        let n = values.len();
        match &mut self.role {
            Role::Hub(channels) => self.runtime.block_on(async {
                for (i, channel) in channels.iter_mut().enumerate() {
                    let theirs = receive(channel, n).await.map_err(|e| error(i + 1, e))?;
                    for (v, t) in values.iter_mut().zip(theirs) {
                        *v += t;
                    }
                }
                for (i, channel) in channels.iter_mut().enumerate() {
                    send(channel, &values).await.map_err(|e| error(i + 1, e))?;
                }
                Ok(values)
            }),
            Role::Spoke(channel) => self.runtime.block_on(async {
                send(channel.as_mut(), &values).await.map_err(|e| error(me, e))?;
                receive(channel.as_mut(), n).await.map_err(|e| error(me, e))
            }),
        }
    }
}

/// `values` as a length header and chunks of raw little-endian floats.
async fn send<C: CommunicationChannel>(channel: &mut C, values: &[f32]) -> Result<(), String> {
    let header = Message::new((values.len() as u64).to_le_bytes().to_vec().into());
    channel.send(header).await.map_err(|e| format!("sending failed: {e:?}"))?;
    for chunk in values.chunks(CHUNK) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        channel
            .send(Message::new(bytes.into()))
            .await
            .map_err(|e| format!("sending failed: {e:?}"))?;
    }
    Ok(())
}

/// The next message's bytes.
async fn next<C: CommunicationChannel>(channel: &mut C) -> Result<Vec<u8>, String> {
    match channel.recv().await {
        Ok(Some(m)) => Ok(m.data.to_vec()),
        Ok(None) => Err("the connection closed (did that node stop?)".to_string()),
        Err(e) => Err(format!("receiving failed: {e:?}")),
    }
}

/// `n` floats sent by [`send`] on the other end.
async fn receive<C: CommunicationChannel>(channel: &mut C, n: usize) -> Result<Vec<f32>, String> {
    let header = next(channel).await?;
    let len = header.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    if len != Some(n) {
        return Err(format!(
            "sent {len:?} values where {n} were expected (are the configs the same on every node?)"
        ));
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let bytes = next(channel).await?;
        out.extend(
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three nodes on loopback (threads here), a vector longer than one message, three sums in a
    /// row: every node gets the same sum each time.
    #[test]
    fn nodes_sum_long_vectors_again_and_again() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let n = CHUNK * 2 + 17;
        let handles: Vec<_> = (0..3)
            .map(|rank| {
                std::thread::spawn(move || {
                    let cluster = Cluster {
                        nodes: 3,
                        node_rank: rank,
                        coordinator: format!("127.0.0.1:{port}"),
                    };
                    let mut link = NodeLink::connect(&cluster).unwrap();
                    (0..3)
                        .map(|round| {
                            let values = (0..n)
                                .map(|i| (i % 7) as f32 + (rank * 10 + round) as f32)
                                .collect();
                            link.all_reduce_sum(values).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let sums: Vec<Vec<Vec<f32>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for round in 0..3 {
            let want: Vec<f32> =
                (0..n).map(|i| 3.0 * (i % 7) as f32 + (30 + 3 * round) as f32).collect();
            for node in &sums {
                assert_eq!(node[round], want, "round {round}");
            }
        }
    }
}
