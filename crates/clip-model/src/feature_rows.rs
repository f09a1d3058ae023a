//! What both feature caches share: one row of floats per key, up to a row limit, served in a
//! batch's order with only the missing keys computed, and counted.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Feature rows by key, at most `max_rows` of them, all `dim` wide.
#[derive(Debug, Clone)]
pub(crate) struct FeatureRows<K> {
    rows: HashMap<K, Vec<f32>>,
    pub(crate) dim: usize,
    max_rows: usize,
}

impl<K> Default for FeatureRows<K> {
    fn default() -> Self {
        Self { rows: HashMap::new(), dim: 0, max_rows: 0 }
    }
}

impl<K: Hash + Eq + Clone> FeatureRows<K> {
    pub(crate) fn new(max_rows: usize) -> Self {
        Self { max_rows, ..Self::default() }
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.rows.contains_key(key)
    }

    /// The rows of `keys` in order, from storage or from `fresh` (just computed); then keeps
    /// the fresh rows while there is room.
    pub(crate) fn assemble(&mut self, keys: &[K], fresh: HashMap<K, Vec<f32>>) -> Vec<f32> {
        let mut out = Vec::with_capacity(keys.len() * self.dim);
        for key in keys {
            match self.rows.get(key) {
                Some(row) => out.extend_from_slice(row),
                None => out.extend_from_slice(&fresh[key]),
            }
        }
        for (key, row) in fresh {
            if self.rows.len() >= self.max_rows {
                break;
            }
            self.rows.insert(key, row);
        }
        out
    }
}

/// Features of a tower that does not change while the cache lives, one row per key (a caption's
/// tokens, an image's index); [`crate::TextFeatureCache`] and [`crate::ImageFeatureCache`] say
/// how their rows are computed.
#[derive(Debug, Clone)]
pub struct FeatureCache<K> {
    pub(crate) rows: FeatureRows<K>,
    /// Rows served from the cache and rows computed, since creation.
    pub hits: u64,
    pub misses: u64,
}

impl<K> Default for FeatureCache<K> {
    fn default() -> Self {
        Self { rows: FeatureRows::default(), hits: 0, misses: 0 }
    }
}

impl<K: Hash + Eq + Clone> FeatureCache<K> {
    /// A cache holding at most `max_rows` rows (past that, new keys are computed each time they
    /// are seen, not stored).
    pub fn new(max_rows: usize) -> Self {
        Self { rows: FeatureRows::new(max_rows), ..Self::default() }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.len() == 0
    }

    /// Width of the cached features (0 before the first batch).
    pub fn dim(&self) -> usize {
        self.rows.dim
    }

    /// The rows of `keys` in order (`[keys.len() * dim]`, row-major). `compute` is called only
    /// when some key is new, with each new key once and the first row that holds it, and returns
    /// their rows in that order.
    pub(crate) fn serve(
        &mut self,
        keys: &[K],
        compute: impl FnOnce(&[(&K, usize)]) -> Vec<f32>,
    ) -> Vec<f32> {
        let mut seen = HashSet::new();
        let missing: Vec<(&K, usize)> = keys
            .iter()
            .enumerate()
            .filter(|&(_, key)| !self.rows.contains(key) && seen.insert(key))
            .map(|(row, key)| (key, row))
            .collect();
        let computed = keys.iter().filter(|key| seen.contains(key)).count();
        self.hits += (keys.len() - computed) as u64;
        self.misses += computed as u64;
        let mut fresh: HashMap<K, Vec<f32>> = HashMap::new();
        if !missing.is_empty() {
            let rows = compute(&missing);
            self.rows.dim = rows.len() / missing.len();
            for (&(key, _), row) in missing.iter().zip(rows.chunks(self.rows.dim)) {
                fresh.insert(key.clone(), row.to_vec());
            }
        }
        self.rows.assemble(keys, fresh)
    }
}
