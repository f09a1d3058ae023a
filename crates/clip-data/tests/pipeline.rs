//! The whole pipeline on generated data: config → dataset → split → loader → batches.

use std::collections::HashSet;
use std::path::Path;

use burn::backend::Flex;
use clip_data::synth::{self, SynthConfig};
use clip_data::{
    load_data_config, CaptionDataset, CaptionTokenizer, ClipLoader, DataConfig, DataError,
    ExamplePipeline, SplitDataset,
};

fn make_data(dir: &Path, images: usize) -> DataConfig {
    synth::generate(dir, &SynthConfig { images, image_size: 32, ..SynthConfig::default() })
        .unwrap();
    let mut c = DataConfig::new(dir.join("results.csv"), dir.join("images"));
    c.image_size = 24;
    c.batch_size = 8;
    c.num_workers = 2;
    c.text_max_length = 64;
    c
}

#[test]
fn batches_are_padded_to_their_longest_caption() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_data(dir.path(), 20);
    let ds = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
    assert_eq!((ds.images.len(), ds.num_captions()), (20, 100));
    let split = SplitDataset::new(&ds, &config.split_config()).unwrap();
    let loader = ClipLoader::new(
        split.train.clone(),
        ExamplePipeline::train(&config.pipeline_config()).unwrap(),
        config.loader(true),
    );
    let tok = CaptionTokenizer::bert_base_uncased(64).unwrap();
    let mut seen = 0;
    let mut lengths = HashSet::new();
    for batch in loader.epoch(0) {
        let batch = batch.unwrap();
        let captions: Vec<String> =
            batch.items.iter().map(|&i| loader.dataset().pair(i).unwrap().caption).collect();
        let longest = captions.iter().map(|c| tok.encode(c).unwrap().len()).max().unwrap();
        assert_eq!(batch.seq_len, longest);
        lengths.insert(batch.seq_len);
        for (row, c) in captions.iter().enumerate() {
            let ids = tok.encode(c).unwrap();
            let row_ids = &batch.input_ids[row * batch.seq_len..(row + 1) * batch.seq_len];
            let row_mask = &batch.attention_mask[row * batch.seq_len..(row + 1) * batch.seq_len];
            assert_eq!(&row_ids[..ids.len()], ids.iter().map(|&i| i as i32).collect::<Vec<_>>());
            assert!(row_ids[ids.len()..].iter().all(|&i| i == 0));
            assert_eq!(row_mask.iter().sum::<i32>() as usize, ids.len());
        }
        let on_device = batch.to_device::<Flex>(&Default::default());
        assert_eq!(on_device.images.dims(), [batch.len(), 3, 24, 24]);
        assert_eq!(on_device.input_ids.dims(), [batch.len(), longest]);
        seen += batch.len();
    }
    assert_eq!(seen, split.train.len());
    assert!(lengths.len() > 1, "batches should differ in length: {lengths:?}");
}

#[test]
fn pad_to_multiple_of_rounds_every_batch_up_and_masks_the_extra_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = make_data(dir.path(), 20);
    config.pad_to_multiple_of = 8;
    let ds = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
    let split = SplitDataset::new(&ds, &config.split_config()).unwrap();
    let loader = ClipLoader::new(
        split.train.clone(),
        ExamplePipeline::train(&config.pipeline_config()).unwrap(),
        config.loader(true),
    );
    let tok = CaptionTokenizer::bert_base_uncased(64).unwrap();
    for batch in loader.epoch(0) {
        let batch = batch.unwrap();
        let longest = batch
            .items
            .iter()
            .map(|&i| tok.encode(&loader.dataset().pair(i).unwrap().caption).unwrap().len())
            .max()
            .unwrap();
        assert_eq!(batch.seq_len, longest.div_ceil(8) * 8, "longest caption {longest}");
        let real: i32 = batch.attention_mask.iter().sum();
        let expected: usize = batch
            .items
            .iter()
            .map(|&i| tok.encode(&loader.dataset().pair(i).unwrap().caption).unwrap().len())
            .sum();
        assert_eq!(real as usize, expected);
    }
    config.pad_to_multiple_of = 0;
    let err = config.validate(&dir.path().join("exp.toml")).unwrap_err().to_string();
    assert!(err.contains("data.pad_to_multiple_of"), "{err}");
}

#[test]
fn split_keeps_all_captions_of_an_image_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = make_data(dir.path(), 30);
    config.split_file = Some(dir.path().join("split.json"));
    let ds = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
    let a = SplitDataset::new(&ds, &config.split_config()).unwrap();
    assert!(dir.path().join("split.json").is_file());
    let train: HashSet<_> = a.train.images().iter().map(|i| i.name.clone()).collect();
    assert!(a.val.images().iter().all(|i| !train.contains(&i.name)));
    assert_eq!(a.val.images().len(), 6);
    assert_eq!(a.train.len() + a.val.len(), 150);
    // A changed seed does not matter once the split file exists: it is reused.
    config.seed = 7;
    let b = SplitDataset::new(&ds, &config.split_config()).unwrap();
    assert_eq!(a.split, b.split);
}

#[test]
fn order_is_reproducible_across_worker_counts_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = make_data(dir.path(), 12);
    config.augment.random_resized_crop = true;
    config.augment.horizontal_flip = true;
    let ds = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
    let split = SplitDataset::new(&ds, &config.split_config()).unwrap();
    let run = |workers: usize, start: usize| {
        let mut c = config.loader(true);
        c.num_workers = workers;
        let loader = ClipLoader::new(
            split.train.clone(),
            ExamplePipeline::train(&config.pipeline_config()).unwrap(),
            c,
        );
        loader.epoch_from(1, start).map(|b| b.unwrap()).collect::<Vec<_>>()
    };
    let inline = run(0, 0);
    assert_eq!(inline, run(3, 0));
    assert_eq!(inline[2..], run(2, 2)[..]);
    let loader = ClipLoader::new(
        split.train.clone(),
        ExamplePipeline::train(&config.pipeline_config()).unwrap(),
        config.loader(true),
    );
    assert_ne!(loader.order(0), loader.order(1));
    assert_eq!(loader.order(1), loader.order(1));
}

#[test]
fn loader_memory_is_bounded_by_prefetch_and_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = make_data(dir.path(), 40);
    config.batch_size = 2;
    config.num_workers = 3;
    config.prefetch_batches = 2;
    let ds = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
    let split = SplitDataset::new(&ds, &config.split_config()).unwrap();
    let loader = ClipLoader::new(
        split.train.clone(),
        ExamplePipeline::train(&config.pipeline_config()).unwrap(),
        config.loader(false),
    );
    let mut epoch = loader.epoch(0);
    let mut n = 0;
    for b in epoch.by_ref() {
        b.unwrap();
        n += 1;
        // A slow consumer: the workers would run ahead if nothing held them back.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(n, loader.num_batches());
    let bound = loader.config().max_batches_in_memory();
    assert_eq!(bound, 5);
    assert!(epoch.max_in_flight() <= bound, "{} > {bound}", epoch.max_in_flight());
    assert!(epoch.max_in_flight() >= 3, "workers never ran ahead: {}", epoch.max_in_flight());
}

#[test]
fn a_vanished_image_is_an_error_naming_it_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = make_data(dir.path(), 6);
    let ds = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
    let split = SplitDataset::new(&ds, &config.split_config()).unwrap();
    let victim = split.train.images()[0].path.clone();
    std::fs::write(&victim, b"garbage").unwrap();
    // The evaluation pipeline (and training with skip_unreadable = false): an error naming it.
    let loader = ClipLoader::new(
        split.train.clone(),
        ExamplePipeline::eval(&config.pipeline_config()).unwrap(),
        config.loader(false),
    );
    let results: Vec<_> = loader.epoch(0).collect();
    let err = results.iter().find_map(|r| r.as_ref().err()).expect("an error");
    assert!(err.to_string().contains(victim.to_str().unwrap()), "{err}");
    // Training: the image's rows are left out of their batches and reported.
    let loader = ClipLoader::new(
        split.train.clone(),
        ExamplePipeline::train(&config.pipeline_config()).unwrap(),
        config.loader(false),
    );
    let batches: Vec<_> = loader.epoch(0).map(|b| b.unwrap()).collect();
    let skipped: Vec<_> = batches.iter().flat_map(|b| b.skipped.iter()).collect();
    let captions = split.train.images()[0].captions.len();
    assert_eq!(skipped.len(), captions);
    assert!(
        skipped.iter().all(|(p, reason)| *p == victim && reason.contains("decode")),
        "{skipped:?}"
    );
    let rows: usize = batches.iter().map(|b| b.len()).sum();
    assert_eq!(rows + captions, split.train.len());
    assert!(batches.iter().all(|b| b.images.len() == b.len() * 3 * b.image_size * b.image_size));
}

#[test]
fn skip_missing_reports_how_many_were_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = make_data(dir.path(), 10);
    for name in ["00002.jpg", "00005.jpg"] {
        std::fs::remove_file(dir.path().join("images").join(name)).unwrap();
    }
    let err = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap_err();
    assert!(matches!(err, DataError::MissingImages { count: 2, .. }), "{err}");
    assert!(err.to_string().contains("00002.jpg") && err.to_string().contains("skip_missing"));
    config.skip_missing = true;
    let ds = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
    assert_eq!(ds.images.len(), 8);
    assert_eq!(ds.report.missing_images.len(), 2);
}

#[test]
fn config_naming_missing_paths_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("exp.toml");
    std::fs::create_dir(dir.path().join("images")).unwrap();
    std::fs::write(&cfg, "[data]\ncaptions = \"nowhere/results.csv\"\nimages = \"images\"\n")
        .unwrap();
    let config = load_data_config(&cfg).unwrap();
    let err = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap_err().to_string();
    assert!(err.contains("nowhere/results.csv"), "{err}");

    std::fs::write(&cfg, "[data]\ncaptions = \"results.csv\"\nimages = \"no-images\"\n").unwrap();
    let err = CaptionDataset::load(&load_data_config(&cfg).unwrap().dataset_config().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-images") && err.contains("data.images"), "{err}");

    let err = load_data_config(&dir.path().join("absent.toml")).unwrap_err().to_string();
    assert!(err.contains("absent.toml"), "{err}");
}

#[test]
fn synthetic_generation_is_deterministic_and_idempotent() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let config = SynthConfig { images: 5, image_size: 32, seed: 3, ..SynthConfig::default() };
    assert!(synth::ensure(a.path(), &config).unwrap());
    assert!(!synth::ensure(a.path(), &config).unwrap());
    synth::generate(b.path(), &config).unwrap();
    for f in ["results.csv", "labels.csv", "images/00004.jpg"] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn loading_never_generates_and_ensure_synthetic_does_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    let shapes = dir.path().join("shapes");
    let cfg = dir.path().join("exp.toml");
    std::fs::write(
        &cfg,
        "[data]\ncaptions = \"shapes/results.csv\"\nimages = \"shapes/images\"\n\
         [data.synthetic]\nimages = 4\nimage_size = 16\n",
    )
    .unwrap();
    let config = load_data_config(&cfg).unwrap();
    let err = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap_err().to_string();
    assert!(err.contains("data.images"), "{err}");
    assert!(!shapes.exists(), "loading wrote nothing");

    assert!(config.ensure_synthetic().unwrap(), "generated");
    assert!(!config.ensure_synthetic().unwrap(), "already there");
    let ds = CaptionDataset::load(&config.dataset_config().unwrap()).unwrap();
    assert_eq!((ds.images.len(), ds.num_captions()), (4, 20));

    let mut own = config.clone();
    own.synthetic = None;
    assert!(!own.ensure_synthetic().unwrap(), "nothing to generate without [data.synthetic]");
}
