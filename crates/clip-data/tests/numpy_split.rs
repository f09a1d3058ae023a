//! `data.split = "numpy-legacy"` against real NumPy: `fixtures/numpy_split.json` was written by
//! `fixtures/make_numpy_split.py` (the NumPy version is recorded in it).

use clip_data::captions::PredefinedSide;
use clip_data::numpy_rng::{LegacyRandomState, SeedOutOfRange};
use clip_data::synth::{self, SynthConfig};
use clip_data::{CaptionDataset, DataConfig, Split, SplitDataset, SplitMethod};
use serde_json::Value;

fn fixture() -> Value {
    let text = include_str!("fixtures/numpy_split.json");
    serde_json::from_str(text).expect("numpy_split.json parses")
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array().expect("an array").iter().map(|x| x.as_u64().expect("an unsigned int")).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    u64s(v).into_iter().map(|x| x as usize).collect()
}

/// The fixture script's FNV-1a 64 over the ids' decimal, comma-joined text.
fn fnv1a64(ids: &[usize]) -> String {
    let text = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn names(n: usize) -> Vec<String> {
    // Not sorted by name in file order, so that file order and name order differ.
    (0..n).map(|i| format!("img{:05}.jpg", (i * 7919) % n.max(1))).collect()
}

#[test]
fn the_fixture_comes_from_numpy() {
    let f = fixture();
    let version = f["numpy_version"].as_str().unwrap();
    assert!(version.split('.').next().unwrap().parse::<u32>().unwrap() >= 1, "{version}");
    assert!(f["cases"].as_array().unwrap().len() >= 20);
}

#[test]
fn raw_mt19937_outputs_match_numpy() {
    let f = fixture();
    // Seed 42's first words, as RandomState(42).randint(0, 2**32) and MT19937.random_raw give them.
    assert_eq!(
        u64s(&f["raw"]["42"]["uint32"])[..4],
        [1_608_637_542, 3_421_126_067, 4_083_286_876, 787_846_414]
    );
    assert_eq!(u64s(&f["raw_bitgen_42"]), u64s(&f["raw"]["42"]["uint32"]));
    for (seed, want) in f["raw"].as_object().unwrap() {
        let mut rs = LegacyRandomState::new(seed.parse().unwrap()).unwrap();
        let words: Vec<u64> = (0..8).map(|_| rs.next_u32() as u64).collect();
        assert_eq!(words, u64s(&want["uint32"]), "seed {seed}: 32-bit words");
        let wide: Vec<u64> = (0..4).map(|_| rs.next_u64()).collect();
        assert_eq!(
            wide,
            u64s(&want["uint64_after"]),
            "seed {seed}: 64-bit draws (high word first)"
        );
    }
}

#[test]
fn interval_draws_match_numpys_masked_rejection() {
    let f = fixture();
    let cases = f["intervals"].as_array().unwrap();
    assert!(
        cases.iter().any(|c| c["max"].as_u64().unwrap() > u32::MAX as u64),
        "the 64-bit branch is covered"
    );
    for c in cases {
        let (seed, max) = (c["seed"].as_u64().unwrap(), c["max"].as_u64().unwrap());
        let mut rs = LegacyRandomState::new(seed).unwrap();
        let draws: Vec<u64> = (0..12).map(|_| rs.random_interval(max)).collect();
        assert_eq!(draws, u64s(&c["draws"]), "seed {seed}, max {max}");
    }
}

#[test]
fn refused_seeds_are_refused_here_too() {
    let f = fixture();
    for (seed, message) in f["refused_seeds"].as_object().unwrap() {
        assert_eq!(
            message.as_str(),
            Some("Seed must be between 0 and 2**32 - 1"),
            "numpy refuses {seed}"
        );
    }
    assert_eq!(LegacyRandomState::new(1 << 32).unwrap_err(), SeedOutOfRange(1 << 32));
    assert_eq!(LegacyRandomState::new(u64::MAX).unwrap_err(), SeedOutOfRange(u64::MAX));
    assert!(Split::numpy_legacy(&names(10), 0.2, 1 << 32).is_err());
}

#[test]
fn every_notebook_draw_matches_numpy() {
    let f = fixture();
    let mut flickr_cases = 0;
    for c in f["cases"].as_array().unwrap() {
        let (n, val_size, seed) = (
            c["n"].as_u64().unwrap() as usize,
            c["val_size"].as_f64().unwrap(),
            c["seed"].as_u64().unwrap(),
        );
        let label = format!("n={n} val_size={val_size} seed={seed}");
        let size = c["size"].as_u64().unwrap() as usize;
        assert_eq!((val_size * n as f64) as usize, size, "{label}: int(val_size * n)");

        let ids = LegacyRandomState::new(seed).unwrap().choice_without_replacement(n, size);
        if !c["valid_ids"].is_null() {
            assert_eq!(ids, usizes(&c["valid_ids"]), "{label}: valid_ids");
        }
        if !c["permutation"].is_null() {
            assert_eq!(
                LegacyRandomState::new(seed).unwrap().permutation(n),
                usizes(&c["permutation"]),
                "{label}: permutation"
            );
        }
        if let Some(hash) = c["fnv1a64"].as_str() {
            flickr_cases += 1;
            assert_eq!(ids[..16], usizes(&c["first"])[..], "{label}: first ids");
            assert_eq!(ids[size - 16..], usizes(&c["last"])[..], "{label}: last ids");
            assert_eq!(fnv1a64(&ids), hash, "{label}: hash of all ids");
        }

        // The split itself: validation is exactly the drawn ids' images, both sides in file order.
        let all = names(n);
        let split = Split::numpy_legacy(&all, val_size, seed).unwrap();
        let mut sorted_ids = ids.clone();
        sorted_ids.sort_unstable();
        let want_val: Vec<String> = sorted_ids.iter().map(|&i| all[i].clone()).collect();
        assert_eq!(split.val, want_val, "{label}: val names");
        let want_train: Vec<String> = (0..n)
            .filter(|i| sorted_ids.binary_search(i).is_err())
            .map(|i| all[i].clone())
            .collect();
        assert_eq!(split.train, want_train, "{label}: train names");
    }
    assert_eq!(flickr_cases, 8, "Flickr30k's 31783 images with val_size 0.1/0.2 and four seeds");
}

#[test]
fn the_hash_would_catch_a_wrong_draw() {
    let f = fixture();
    let c = f["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["n"] == 31783 && c["seed"] == 42 && c["val_size"] == 0.2)
        .unwrap();
    let mut ids = usizes(&c["valid_ids"]);
    assert_eq!(fnv1a64(&ids), c["fnv1a64"].as_str().unwrap());
    ids.swap(0, 1);
    assert_ne!(fnv1a64(&ids), c["fnv1a64"].as_str().unwrap());
    // The ChaCha split does not happen to agree with the notebook's.
    let all = names(31783);
    let random = Split::by_image(&all, 0.2, 42);
    let legacy = Split::numpy_legacy(&all, 0.2, 42).unwrap();
    let mut a = legacy.val.clone();
    a.sort();
    assert_ne!(a, random.val);
}

fn synth_config(dir: &std::path::Path, images: usize) -> DataConfig {
    synth::generate(dir, &SynthConfig { images, image_size: 16, ..SynthConfig::default() })
        .unwrap();
    let mut c = DataConfig::new(dir.join("results.csv"), dir.join("images"));
    c.split = SplitMethod::NumpyLegacy;
    c
}

#[test]
fn split_dataset_routes_numpy_legacy_over_captions_file_order() {
    let f = fixture();
    let c = f["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["n"] == 10 && c["seed"] == 42 && c["val_size"] == 0.2)
        .unwrap();
    let mut want: Vec<usize> = usizes(&c["valid_ids"]);
    want.sort_unstable();

    let dir = tempfile::tempdir().unwrap();
    let config = synth_config(dir.path(), 10);
    let ds = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
    // CaptionDataset keeps the captions file's first-appearance order: check it against the file.
    let text = std::fs::read_to_string(&config.captions).unwrap();
    let mut file_order: Vec<String> = Vec::new();
    for line in text.lines().skip(1) {
        let name = line.split('|').next().unwrap().trim().to_string();
        if !file_order.contains(&name) {
            file_order.push(name);
        }
    }
    let names: Vec<String> = ds.images.iter().map(|i| i.name.clone()).collect();
    assert_eq!(names, file_order);

    let split = SplitDataset::new(&ds, &config.split_config()).unwrap();
    let want_val: Vec<String> = want.iter().map(|&i| names[i].clone()).collect();
    assert_eq!(split.split.val, want_val);
    assert_eq!(split.val.len(), want_val.len() * 5, "five captions per synthetic image");
    assert_eq!(split.split.train.len(), 8);

    // The default stays the ChaCha split.
    let mut random = config.clone();
    random.split = SplitMethod::Random;
    assert_eq!(
        SplitDataset::new(&ds, &random.split_config()).unwrap().split,
        Split::by_image(&names, 0.2, 42)
    );
}

#[test]
fn split_file_and_predefined_splits_keep_their_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = synth_config(dir.path(), 10);
    let ds = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
    let names: Vec<String> = ds.images.iter().map(|i| i.name.clone()).collect();

    // A named split file that does not exist yet receives the numpy-legacy split...
    let path = dir.path().join("split.json");
    config.split_file = Some(path.clone());
    let legacy = SplitDataset::new(&ds, &config.split_config()).unwrap().split;
    assert_eq!(legacy, Split::numpy_legacy(&names, 0.2, 42).unwrap());
    assert_eq!(Split::load(&path).unwrap(), legacy);
    // ...and an existing one wins over it.
    let saved = Split::by_image(&names, 0.5, 9);
    saved.save(&path).unwrap();
    assert_eq!(SplitDataset::new(&ds, &config.split_config()).unwrap().split, saved);

    // A split the captions file defines wins too.
    config.split_file = None;
    let mut karpathy = ds.clone();
    karpathy.predefined_split = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.clone(),
                if i < 2 {
                    PredefinedSide::Test
                } else if i < 4 {
                    PredefinedSide::Val
                } else {
                    PredefinedSide::Train
                },
            )
        })
        .collect();
    let s = SplitDataset::new(&karpathy, &config.split_config()).unwrap().split;
    assert_eq!(s, Split::predefined(&karpathy.predefined_split, 42));
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (6, 2, 2));
}
