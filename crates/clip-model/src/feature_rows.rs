//! The storage both feature caches share: one row of floats per key, up to a row limit.

use std::collections::HashMap;
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
