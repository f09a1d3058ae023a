//! Top-k search over 1M × 256 embeddings: single-query latency and batched queries/s.
//!
//! `cargo bench -p clip-infer --bench topk -- [DIR]` writes DIR/rows.npy and DIR/queries.npy
//! (random unit vectors, fixed seed) for the NumPy peer, `benches/topk_peer.py DIR`, which runs
//! the same searches on the same data. Prints one JSON line per measurement.

use std::path::PathBuf;
use std::time::Instant;

use clip_infer::index::write_npy_f32;
use clip_infer::search::search;

fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    // xorshift64*: deterministic and fast; values in [-1, 1), then rows normalized.
    let mut s = seed | 1;
    let mut v: Vec<f32> = (0..n * dim)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    for r in v.chunks_mut(dim) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        r.iter_mut().for_each(|x| *x /= n);
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .skip(1)
            .find(|a| a != "--bench")
            .unwrap_or_else(|| "/tmp/clip-topk".into()),
    );
    let (n, dim, k, batch) = (1_000_000, 256, 10, 64);
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let rows = unit_rows(n, dim, 7);
    let queries = unit_rows(batch, dim, 11);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rows.npy"), write_npy_f32(&rows, [n, dim])).unwrap();
    std::fs::write(dir.join("queries.npy"), write_npy_f32(&queries, [batch, dim])).unwrap();

    // Single queries, one after the other (what `clip search` does).
    let _ = search(&rows, &queries[..dim], dim, k, threads);
    let lat: Vec<f64> = queries
        .chunks(dim)
        .take(20)
        .map(|q| {
            let t = Instant::now();
            let hits = search(&rows, q, dim, k, threads);
            assert_eq!(hits[0].len(), k);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let single = median(lat);
    // A batch of queries in one pass over the index.
    let _ = search(&rows, &queries, dim, k, threads);
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let hits = search(&rows, &queries, dim, k, threads);
            assert_eq!(hits.len(), batch);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let batched = median(runs);
    let top: Vec<usize> =
        search(&rows, &queries[..dim], dim, k, threads)[0].iter().map(|h| h.index).collect();
    println!(
        "{{\"what\": \"topk\", \"stack\": \"clip-infer (gemm + heap)\", \"rows\": {n}, \"dim\": {dim}, \"k\": {k}, \"threads\": {threads}, \"single_query_ms\": {:.2}, \"single_queries_per_s\": {:.1}, \"batch\": {batch}, \"batched_queries_per_s\": {:.1}, \"first_query_top\": {:?}}}",
        single * 1e3,
        1.0 / single,
        batch as f64 / batched,
        top
    );
}
