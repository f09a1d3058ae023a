//! NumPy's legacy `RandomState` (MT19937), just far enough to redraw the seed notebook's split.
//!
//! Why this exists: the notebook splits Flickr30k with `np.random.seed(42)` followed by
//! `np.random.choice(image_ids, size, replace=False)`. To validate on exactly the images the
//! notebook validated on (and so compare losses and recalls image for image), `data.split =
//! "numpy-legacy"` must redraw that choice bit for bit, without Python. NumPy guarantees the
//! legacy `RandomState` stream stays the same across versions (NEP 19), so a small port is stable.
//!
//! What is ported (numpy/random: `_mt19937.pyx`, `mt19937.c`, `mtrand.pyx`, `distributions.c`):
//! - legacy seeding of an int seed: `mt19937_seed` (Matsumoto–Nishimura `init_genrand`); seeds
//!   outside `0..=2**32 - 1` are refused, as NumPy refuses them;
//! - `next_uint32` (tempered MT19937 output) and `next_uint64` (two words, the first one high);
//! - `random_interval(max)`: mask-and-reject on 32-bit words, on 64-bit draws when `max > 2**32 - 1`;
//! - `permutation(n)`: `arange(n)` shuffled by `for i in reversed(range(1, n)): j =
//!   random_interval(i); swap(i, j)`;
//! - `choice(n, size, replace=False)` without `p`: `permutation(n)[:size]`.
//!
//! `tests/fixtures/numpy_split.json` (made by `make_numpy_split.py` with real NumPy) checks each.

use std::fmt;

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// A seed NumPy's legacy seeding refuses (`ValueError: Seed must be between 0 and 2**32 - 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedOutOfRange(pub u64);

impl fmt::Display for SeedOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed {} is out of range: NumPy's legacy RandomState takes seeds between 0 and 2**32 - 1 (4294967295)", self.0)
    }
}

impl std::error::Error for SeedOutOfRange {}

/// The MT19937 state of a legacy `RandomState` (`np.random.seed(seed)` / `RandomState(seed)`).
#[derive(Clone)]
pub struct LegacyRandomState {
    key: [u32; N],
    pos: usize,
}

impl fmt::Debug for LegacyRandomState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyRandomState").field("pos", &self.pos).finish_non_exhaustive()
    }
}

impl LegacyRandomState {
    /// `np.random.seed(seed)` for an int seed; larger seeds are refused, as NumPy does.
    pub fn new(seed: u64) -> Result<Self, SeedOutOfRange> {
        let seed = u32::try_from(seed).map_err(|_| SeedOutOfRange(seed))?;
        let mut key = [0u32; N];
        key[0] = seed;
        for i in 1..N {
            let prev = key[i - 1];
            key[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        Ok(Self { key, pos: N })
    }

    fn generate(&mut self) {
        let twist = |a: u32, b: u32, c: u32| {
            let y = (a & UPPER_MASK) | (b & LOWER_MASK);
            c ^ (y >> 1) ^ if y & 1 == 1 { MATRIX_A } else { 0 }
        };
        for i in 0..N - M {
            self.key[i] = twist(self.key[i], self.key[i + 1], self.key[i + M]);
        }
        for i in N - M..N - 1 {
            self.key[i] = twist(self.key[i], self.key[i + 1], self.key[i + M - N]);
        }
        self.key[N - 1] = twist(self.key[N - 1], self.key[0], self.key[M - 1]);
        self.pos = 0;
    }

    /// The next tempered 32-bit output (`random_raw`, `randint(0, 2**32)`).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == N {
            self.generate();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Two outputs as one 64-bit draw, the first one in the high half (NumPy's `next_uint64`).
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// A uniform draw in `[0, max]` by masked rejection (legacy `random_interval`).
    pub fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        if max <= u32::MAX as u64 {
            loop {
                let v = self.next_u32() as u64 & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let v = self.next_u64() & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }

    /// Shuffles in place as legacy `shuffle` does a 1-d array.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.random_interval(i as u64) as usize;
            items.swap(i, j);
        }
    }

    /// `permutation(n)`: `0..n` shuffled.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        self.shuffle(&mut v);
        v
    }

    /// `choice(n, size, replace=False)` (no `p`): the first `size` of `permutation(n)`.
    /// `size > n` is clamped to `n` (NumPy raises instead).
    pub fn choice_without_replacement(&mut self, n: usize, size: usize) -> Vec<usize> {
        let mut p = self.permutation(n);
        p.truncate(size);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_mt19937_outputs() {
        // Matsumoto & Nishimura's mt19937ar.c, init_genrand(5489) (std::mt19937's default):
        // the 10000th output is 4123659995 (C++11 [rand.predef]).
        let mut rs = LegacyRandomState::new(5489).unwrap();
        let first = rs.next_u32();
        assert_eq!(first, 3_499_211_612);
        let last = (1..10_000).map(|_| rs.next_u32()).last().unwrap();
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn seeds_numpy_refuses_are_an_error() {
        assert!(LegacyRandomState::new(u32::MAX as u64).is_ok());
        let err = LegacyRandomState::new(1 << 32).unwrap_err();
        assert_eq!(err, SeedOutOfRange(1 << 32));
        assert!(err.to_string().contains("2**32 - 1"), "{err}");
    }

    #[test]
    fn interval_draws_stay_in_range_and_cover_it() {
        let mut rs = LegacyRandomState::new(3).unwrap();
        let mut seen = [false; 6];
        for _ in 0..200 {
            let v = rs.random_interval(5);
            assert!(v <= 5);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(rs.random_interval(0), 0);
    }

    #[test]
    fn a_permutation_holds_every_index_once() {
        let mut rs = LegacyRandomState::new(42).unwrap();
        let mut p = rs.permutation(1000);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
        assert_eq!(LegacyRandomState::new(1).unwrap().permutation(1), vec![0]);
        assert!(LegacyRandomState::new(1).unwrap().permutation(0).is_empty());
    }
}
