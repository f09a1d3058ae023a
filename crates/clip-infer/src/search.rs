//! Brute-force top-k over an embedding matrix. One query: a single pass over the rows on every
//! core, dot products with AVX2/FMA when the CPU has them, a small heap per core (memory-bound:
//! the rows are read once, no score buffer is written). Several queries: one matrix product (the
//! `gemm` crate picks SIMD and threads at run time), then a heap pass per query.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::matmul::View;

/// One result: the row of the index and its score (cosine similarity for normalized rows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub score: f32,
}

/// Min-heap entry (the worst of the kept k on top).
#[derive(PartialEq)]
struct Worst(f32, usize);
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the smallest score is the "greatest" so BinaryHeap pops it first; ties keep
        // the lower index.
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

/// The `k` best of `scores` (index order), best first.
pub fn top_k_of(scores: impl Iterator<Item = f32>, k: usize) -> Vec<Hit> {
    if k == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
    for (i, s) in scores.enumerate() {
        if s.is_nan() {
            continue;
        }
        if heap.len() < k {
            heap.push(Worst(s, i));
        } else if let Some(top) = heap.peek() {
            if s > top.0 {
                heap.pop();
                heap.push(Worst(s, i));
            }
        }
    }
    let mut hits: Vec<Hit> =
        heap.into_iter().map(|Worst(score, index)| Hit { index, score }).collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    hits
}

/// `out[n * q + j] = rows[n] · queries[j]` for `rows` `[n, dim]` and `queries` `[q, dim]`.
pub fn scores(rows: &[f32], queries: &[f32], dim: usize, threads: usize) -> Vec<f32> {
    assert!(
        dim > 0 && rows.len().is_multiple_of(dim) && queries.len().is_multiple_of(dim),
        "shapes"
    );
    let (n, q) = (rows.len() / dim, queries.len() / dim);
    crate::matmul::matmul(View::rows(rows, dim), View::transposed(queries, dim), n, dim, q, threads)
}

/// Dot product, 8 lanes wide so that it vectorizes.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scan_avx2(rows: &[f32], query: &[f32], dim: usize, k: usize, offset: usize) -> Vec<Hit> {
    top_k_of(rows.chunks_exact(dim).map(|r| dot_lanes(r, query)), k)
        .into_iter()
        .map(|h| Hit { index: h.index + offset, ..h })
        .collect()
}

fn scan(rows: &[f32], query: &[f32], dim: usize, k: usize, offset: usize) -> Vec<Hit> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { scan_avx2(rows, query, dim, k, offset) };
    }
    let plain = |r: &[f32]| r.iter().zip(query).map(|(a, b)| a * b).sum::<f32>();
    top_k_of(rows.chunks_exact(dim).map(plain), k)
        .into_iter()
        .map(|h| Hit { index: h.index + offset, ..h })
        .collect()
}

/// Top-k rows for one query, scanning on `threads` threads.
pub fn search_one(rows: &[f32], query: &[f32], dim: usize, k: usize, threads: usize) -> Vec<Hit> {
    let n = rows.len() / dim.max(1);
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let per = n.div_ceil(threads.max(1)).max(1);
    let partial: Vec<Vec<Hit>> = std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(per * dim)
            .enumerate()
            .map(|(c, chunk)| s.spawn(move || scan(chunk, query, dim, k, c * per)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("scan thread")).collect()
    });
    let mut best: Vec<Hit> = partial.into_iter().flatten().collect();
    best.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    best.truncate(k);
    best
}

/// Top-k rows for each query (rows and queries L2-normalized for cosine similarity).
pub fn search(
    rows: &[f32],
    queries: &[f32],
    dim: usize,
    k: usize,
    threads: usize,
) -> Vec<Vec<Hit>> {
    let q = queries.len() / dim.max(1);
    if q == 1 {
        return vec![search_one(rows, queries, dim, k, threads)];
    }
    let s = scores(rows, queries, dim, threads);
    (0..q).map(|j| top_k_of(s.iter().skip(j).step_by(q.max(1)).copied(), k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_best_rows_in_order() {
        // Rows at angles 0..8 × 10°, query at 35°: closest are 30° and 40°, then 20°/50°.
        let rows: Vec<f32> = (0..8)
            .flat_map(|i| {
                let a = (i as f32 * 10.0).to_radians();
                [a.cos(), a.sin()]
            })
            .collect();
        let a = 35f32.to_radians();
        let hits = &search(&rows, &[a.cos(), a.sin()], 2, 4, 1)[0];
        let idx: Vec<usize> = hits.iter().map(|h| h.index).collect();
        assert_eq!(
            &idx[..2].iter().copied().collect::<std::collections::HashSet<_>>(),
            &[3, 4].into_iter().collect()
        );
        assert_eq!(
            idx[2..].iter().copied().collect::<std::collections::HashSet<_>>(),
            [2, 5].into_iter().collect()
        );
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        assert!((hits[0].score - 5f32.to_radians().cos()).abs() < 1e-6);
    }

    #[test]
    fn batched_queries_match_one_by_one_and_brute_force() {
        let dim = 7;
        let rows: Vec<f32> =
            (0..500 * dim).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let queries: Vec<f32> =
            (0..3 * dim).map(|i| ((i * 104729 % 997) as f32 / 498.0) - 1.0).collect();
        let batched = search(&rows, &queries, dim, 5, 2);
        for (j, q) in queries.chunks(dim).enumerate() {
            let single = &search(&rows, q, dim, 5, 1)[0];
            // The one-query scan and the matrix product sum in different orders: same rows,
            // scores equal up to rounding.
            for (a, b) in single.iter().zip(&batched[j]) {
                assert_eq!(a.index, b.index);
                assert!((a.score - b.score).abs() < 1e-5);
            }
            assert_eq!(search(&rows, q, dim, 5, 3)[0], *single, "thread count does not matter");
            let mut brute: Vec<(f32, usize)> = rows
                .chunks(dim)
                .map(|r| r.iter().zip(q).map(|(a, b)| a * b).sum::<f32>())
                .zip(0..)
                .collect();
            brute.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (h, (s, i)) in single.iter().zip(brute) {
                assert!((h.score - s).abs() < 1e-4 && (h.index == i || (h.score - s).abs() < 1e-6));
            }
        }
        assert!(search(&rows, &queries, dim, 0, 1).iter().all(Vec::is_empty));
        assert!(search(&[], &queries, dim, 3, 1).iter().all(Vec::is_empty));
    }
}
