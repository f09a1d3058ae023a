//! Linear-probe evaluation (OpenAI CLIP's second benchmark beside zero-shot): a multinomial
//! logistic regression trained on frozen image embeddings of labelled training images, scored
//! on held-out ones. It measures how much class information the image tower's features carry,
//! whatever the text tower learned.
//!
//! The regression is fitted to convergence with L-BFGS on the CPU (the objective is convex; the
//! features are a few hundred wide), and its L2 strength is chosen on a validation part of the
//! training features, as OpenAI's protocol does, before the final fit on all of them.

use serde::Serialize;

use crate::matmul::{matmul, threads_for, View};

/// How to fit one probe.
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    /// L2 penalty on the weights (not the biases): `λ/2 ‖W‖²` added to the mean cross-entropy.
    pub l2: f64,
    pub max_iterations: usize,
    /// Converged when no gradient component exceeds this.
    pub tolerance: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self { l2: 1e-4, max_iterations: 1000, tolerance: 1e-6 }
    }
}

/// Labelled feature rows: `[n, dim]` row-major, a class index per row.
#[derive(Debug, Clone, Copy)]
pub struct Labelled<'a> {
    pub features: &'a [f32],
    pub labels: &'a [usize],
    pub dim: usize,
}

impl Labelled<'_> {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A fitted linear classifier: `argmax(W x + b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbe {
    /// `[classes, dim]` row-major.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub dim: usize,
    pub classes: usize,
}

/// How a fit went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FitReport {
    pub iterations: usize,
    pub converged: bool,
    /// The objective at the end: mean cross-entropy plus the penalty.
    pub objective: f64,
}

impl LinearProbe {
    /// All-zero weights (every class equally likely).
    pub fn zeros(dim: usize, classes: usize) -> Self {
        Self { weights: vec![0.0; classes * dim], bias: vec![0.0; classes], dim, classes }
    }

    /// Fits a probe to `data` from `start` (warm start) or from zeros.
    pub fn fit(
        data: Labelled,
        classes: usize,
        options: FitOptions,
        start: Option<&LinearProbe>,
    ) -> (Self, FitReport) {
        assert!(
            classes > 0
                && data.dim > 0
                && !data.is_empty()
                && data.features.len() == data.len() * data.dim,
            "probe: shapes"
        );
        assert!(data.labels.iter().all(|&l| l < classes), "probe: a label is out of range");
        assert!(data.features.iter().all(|v| v.is_finite()), "probe: features must be finite");
        let objective = Objective { data, classes, l2: options.l2 };
        let x0 = match start {
            Some(p) if p.dim == data.dim && p.classes == classes => {
                p.weights.iter().chain(&p.bias).map(|&v| v as f64).collect()
            }
            _ => vec![0.0; classes * data.dim + classes],
        };
        let (x, report) = lbfgs(&objective, x0, options);
        let (w, b) = x.split_at(classes * data.dim);
        let probe = Self {
            weights: w.iter().map(|&v| v as f32).collect(),
            bias: b.iter().map(|&v| v as f32).collect(),
            dim: data.dim,
            classes,
        };
        (probe, report)
    }

    /// The class scores `W x + b` of each row: `[n, classes]`.
    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        let n = features.len() / self.dim;
        let mut z = matmul(
            View::rows(features, self.dim),
            View::transposed(&self.weights, self.dim),
            n,
            self.dim,
            self.classes,
            threads_for(n * self.dim * self.classes),
        );
        for row in z.chunks_mut(self.classes) {
            row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
        }
        z
    }

    /// The predicted class of each row.
    pub fn predict(&self, features: &[f32]) -> Vec<usize> {
        self.logits(features).chunks(self.classes).map(argmax).collect()
    }

    /// Top-1 accuracy on labelled rows.
    pub fn accuracy(&self, data: Labelled) -> f64 {
        if data.is_empty() {
            return 0.0;
        }
        let hits =
            self.predict(data.features).iter().zip(data.labels).filter(|(p, l)| p == l).count();
        hits as f64 / data.len() as f64
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
        .0
}

/// Mean softmax cross-entropy of a linear model plus `λ/2 ‖W‖²`, over θ = [W (row-major), b].
struct Objective<'a> {
    data: Labelled<'a>,
    classes: usize,
    l2: f64,
}

impl Objective<'_> {
    /// The objective and its gradient at `theta`.
    fn eval(&self, theta: &[f64]) -> (f64, Vec<f64>) {
        let (n, d, k) = (self.data.len(), self.data.dim, self.classes);
        let probe = LinearProbe {
            weights: theta[..k * d].iter().map(|&v| v as f32).collect(),
            bias: theta[k * d..].iter().map(|&v| v as f32).collect(),
            dim: d,
            classes: k,
        };
        // Residuals R = softmax(Z) − onehot(y), scaled by 1/n; loss from the same pass.
        let mut r = probe.logits(self.data.features);
        let mut loss = 0.0f64;
        for (row, &y) in r.chunks_mut(k).zip(self.data.labels) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&z| ((z - max) as f64).exp()).sum();
            loss += sum.ln() - (row[y] - max) as f64;
            for (j, v) in row.iter_mut().enumerate() {
                let p = ((*v - max) as f64).exp() / sum;
                *v = ((p - if j == y { 1.0 } else { 0.0 }) / n as f64) as f32;
            }
        }
        // ∇W = Rᵀ X + λW, ∇b = Σ_rows R.
        let gw = matmul(
            View::transposed(&r, k),
            View::rows(self.data.features, d),
            k,
            n,
            d,
            threads_for(n * d * k),
        );
        let mut grad: Vec<f64> = gw.iter().map(|&v| v as f64).collect();
        let mut gb = vec![0f64; k];
        for row in r.chunks(k) {
            gb.iter_mut().zip(row).for_each(|(g, &v)| *g += v as f64);
        }
        let mut penalty = 0.0;
        for (g, &w) in grad.iter_mut().zip(&theta[..k * d]) {
            *g += self.l2 * w;
            penalty += w * w;
        }
        grad.extend(gb);
        (loss / n as f64 + 0.5 * self.l2 * penalty, grad)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Limited-memory BFGS (10 pairs) with a backtracking (Armijo) line search.
fn lbfgs(objective: &Objective, mut x: Vec<f64>, options: FitOptions) -> (Vec<f64>, FitReport) {
    const MEMORY: usize = 10;
    let (mut f, mut g) = objective.eval(&x);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> =
        std::collections::VecDeque::new();
    let mut report = FitReport { iterations: 0, converged: false, objective: f };
    for iteration in 0..options.max_iterations {
        report.iterations = iteration;
        if g.iter().all(|v| v.abs() <= options.tolerance) {
            report.converged = true;
            break;
        }
        // Two-loop recursion: d = −H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = history
            .back()
            .map_or(1.0 / g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1.0), |(s, y, _)| {
                dot(s, y) / dot(y, y)
            });
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in history.iter().zip(alphas.into_iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut direction: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &direction);
        if !(slope < 0.0) {
            // Not a descent direction (numerical trouble): restart from the gradient.
            history.clear();
            direction = g.iter().map(|v| -v).collect();
            slope = -dot(&g, &g);
        }
        let mut step = 1.0;
        let accepted = loop {
            let candidate: Vec<f64> =
                x.iter().zip(&direction).map(|(xi, di)| xi + step * di).collect();
            let (fc, gc) = objective.eval(&candidate);
            if fc.is_finite() && fc <= f + 1e-4 * step * slope {
                break Some((candidate, fc, gc));
            }
            step *= 0.5;
            if step < 1e-12 {
                break None;
            }
        };
        let Some((next, f_next, g_next)) = accepted else {
            // No decrease along a descent direction: as close to the minimum as f64 can tell
            // (unless the objective itself is not a number).
            report.converged = f.is_finite();
            break;
        };
        let s: Vec<f64> = next.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_next.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        let decrease = f - f_next;
        (x, f, g) = (next, f_next, g_next);
        report.iterations = iteration + 1;
        if decrease <= 1e-12 * f.abs().max(1.0) {
            report.converged = true;
            break;
        }
    }
    report.objective = f;
    (x, report)
}

/// One candidate penalty and how the probe fitted with it scored on the validation part.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SweepPoint {
    pub l2: f64,
    pub validation_accuracy: f64,
}

/// The chosen penalty, the final probe fitted on all training rows, and how it went.
#[derive(Debug, Clone)]
pub struct ProbeFit {
    pub probe: LinearProbe,
    pub l2: f64,
    pub sweep: Vec<SweepPoint>,
    pub report: FitReport,
}

/// The penalties tried by default: 1 down to 1e-8, a decade apart.
pub fn default_grid() -> Vec<f64> {
    (0..=8).map(|e| 10f64.powi(-e)).collect()
}

/// Picks the L2 penalty from `grid` by accuracy on a seeded `validation_fraction` of the
/// training rows (strongest penalty on ties), then fits on all of them with it. A grid of one
/// value, or fewer than two rows, skips the sweep (the first penalty of the grid is used).
pub fn fit_with_sweep(
    train: Labelled,
    classes: usize,
    grid: &[f64],
    validation_fraction: f64,
    seed: u64,
    options: FitOptions,
) -> ProbeFit {
    assert!(!grid.is_empty(), "probe: empty penalty grid");
    let mut sweep = Vec::new();
    let mut chosen = grid[0];
    let mut warm: Option<LinearProbe> = None;
    if grid.len() > 1 && train.len() >= 2 {
        let (fit_part, check_part) = split_rows(train, validation_fraction, seed);
        let (fit, check) = (fit_part.view(train.dim), check_part.view(train.dim));
        let mut strongest_first = grid.to_vec();
        strongest_first.sort_by(|a, b| b.total_cmp(a));
        let mut best = f64::NEG_INFINITY;
        for l2 in strongest_first {
            let (probe, _) =
                LinearProbe::fit(fit, classes, FitOptions { l2, ..options }, warm.as_ref());
            let accuracy = probe.accuracy(check);
            sweep.push(SweepPoint { l2, validation_accuracy: accuracy });
            if accuracy > best {
                (best, chosen) = (accuracy, l2);
            }
            warm = Some(probe);
        }
    }
    let (probe, report) =
        LinearProbe::fit(train, classes, FitOptions { l2: chosen, ..options }, None);
    ProbeFit { probe, l2: chosen, sweep, report }
}

/// Owned rows of a [`Labelled`] set.
struct Rows {
    features: Vec<f32>,
    labels: Vec<usize>,
}

impl Rows {
    fn view(&self, dim: usize) -> Labelled<'_> {
        Labelled { features: &self.features, labels: &self.labels, dim }
    }
}

/// A reproducible permutation of `0..n` for `seed` (Fisher–Yates driven by SplitMix64, so no
/// random-number crate decides what a seed means).
pub fn seeded_order(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed ^ 0x5851_f42d_4c95_7f2d;
    for i in (1..n).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        order.swap(i, (z % (i as u64 + 1)) as usize);
    }
    order
}

/// A seeded shuffle of the rows, cut into (the rest, `fraction` of them); both parts non-empty
/// when there are at least two rows.
fn split_rows(data: Labelled, fraction: f64, seed: u64) -> (Rows, Rows) {
    let n = data.len();
    let order = seeded_order(n, seed);
    let held =
        ((n as f64 * fraction).round() as usize).clamp(n.min(1), n.saturating_sub(1).max(n.min(1)));
    let take = |idx: &[usize]| Rows {
        features: idx
            .iter()
            .flat_map(|&i| data.features[i * data.dim..(i + 1) * data.dim].iter().copied())
            .collect(),
        labels: idx.iter().map(|&i| data.labels[i]).collect(),
    };
    let (check, fit) = order.split_at(held);
    (take(fit), take(check))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` points per class around `classes` centres in `dim` dimensions, with noise `spread`.
    fn clusters(
        classes: usize,
        n: usize,
        dim: usize,
        spread: f32,
        seed: u64,
    ) -> (Vec<f32>, Vec<usize>) {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let centres: Vec<f32> = (0..classes * dim).map(|_| next() * 2.0).collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..classes * n {
            let c = i % classes;
            x.extend((0..dim).map(|j| centres[c * dim + j] + spread * next()));
            y.push(c);
        }
        (x, y)
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let (x, y) = clusters(3, 5, 4, 1.0, 1);
        let objective =
            Objective { data: Labelled { features: &x, labels: &y, dim: 4 }, classes: 3, l2: 0.3 };
        let theta: Vec<f64> = (0..15).map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.1).collect();
        let (_, grad) = objective.eval(&theta);
        for i in 0..theta.len() {
            let h = 1e-3;
            let (mut up, mut down) = (theta.clone(), theta.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (objective.eval(&up).0 - objective.eval(&down).0) / (2.0 * h);
            assert!(
                (numeric - grad[i]).abs() < 2e-4,
                "θ[{i}]: analytic {} numeric {numeric}",
                grad[i]
            );
        }
    }

    #[test]
    fn fits_separable_clusters_to_a_stationary_point() {
        let (x, y) = clusters(4, 50, 8, 0.5, 2);
        let data = Labelled { features: &x, labels: &y, dim: 8 };
        let (probe, report) =
            LinearProbe::fit(data, 4, FitOptions { l2: 1e-3, ..Default::default() }, None);
        assert!(report.converged, "{report:?}");
        assert_eq!(probe.accuracy(data), 1.0);
        // At the minimum the gradient vanishes.
        let theta: Vec<f64> = probe.weights.iter().chain(&probe.bias).map(|&v| v as f64).collect();
        let (_, grad) = Objective { data, classes: 4, l2: 1e-3 }.eval(&theta);
        assert!(grad.iter().all(|g| g.abs() < 1e-3), "{grad:?}");
    }

    #[test]
    fn a_stronger_penalty_shrinks_the_weights() {
        let (x, y) = clusters(3, 30, 6, 1.5, 3);
        let data = Labelled { features: &x, labels: &y, dim: 6 };
        let norm = |l2| {
            let (p, _) = LinearProbe::fit(data, 3, FitOptions { l2, ..Default::default() }, None);
            p.weights.iter().map(|w| (w * w) as f64).sum::<f64>()
        };
        assert!(norm(1.0) < norm(1e-2) && norm(1e-2) < norm(1e-4));
    }

    #[test]
    fn the_sweep_prefers_a_penalty_that_generalizes_over_one_that_underfits() {
        // Noisy, overlapping classes: λ = 10 drives every weight to ~0 (chance accuracy).
        let (x, y) = clusters(5, 60, 10, 2.0, 4);
        let train = Labelled { features: &x, labels: &y, dim: 10 };
        let fit = fit_with_sweep(train, 5, &[10.0, 1e-3], 0.2, 7, FitOptions::default());
        assert_eq!(fit.l2, 1e-3, "{:?}", fit.sweep);
        assert_eq!(fit.sweep.len(), 2);
        assert!(
            fit.sweep[0].validation_accuracy < fit.sweep[1].validation_accuracy,
            "{:?}",
            fit.sweep
        );
        let (xt, yt) = clusters(5, 40, 10, 2.0, 4);
        assert!(fit.probe.accuracy(Labelled { features: &xt, labels: &yt, dim: 10 }) > 0.5);
    }

    #[test]
    fn the_validation_split_is_seeded_and_keeps_both_parts() {
        let (x, y) = clusters(2, 10, 3, 1.0, 5);
        let data = Labelled { features: &x, labels: &y, dim: 3 };
        let (a, b) = split_rows(data, 0.25, 9);
        assert_eq!((a.labels.len(), b.labels.len()), (15, 5));
        let (c, _) = split_rows(data, 0.25, 9);
        assert_eq!(a.features, c.features);
        let (d, _) = split_rows(data, 0.25, 10);
        assert_ne!(a.features, d.features);
        let one = Labelled { features: &x[..6], labels: &y[..2], dim: 3 };
        let (e, f) = split_rows(one, 0.9, 1);
        assert_eq!((e.labels.len(), f.labels.len()), (1, 1));
    }
}
