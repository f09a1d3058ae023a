//! Data-parallel training on several devices (threads of one process on the CPU backend, each a
//! replica registered with burn-collective) gives what one device gives with the same batch in
//! as many micro-batches: the same loss and gradients per step, the same loss curve, resumable.

use std::sync::mpsc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clip_model::ClipModel;
use clip_train::collective::BurnCollective;
use clip_train::metrics::StepMetrics;
use clip_train::optim::GroupGrads;
use clip_train::replicas::shares;
use clip_train::step::{
    forward_backward, forward_backward_replica, micro_batch_ranges, ReplicaLoss, ReplicaRows,
};
use clip_train::{train, RunDir, Silent};

mod common;

use common::{config, model_and_batch, steps, StopAt, B};

type Inner = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;

/// Every gradient of `model`'s trainable parameters in `grads`, flattened in visit order (a
/// missing one as zeros).
fn flat_grads(model: &ClipModel<B>, grads: &GroupGrads) -> Vec<Vec<f32>> {
    struct Collect<'a>(&'a GroupGrads, Vec<Vec<f32>>);
    impl ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !param.is_require_grad() {
                return;
            }
            let n = param.val().shape().num_elements();
            self.1.push(match self.0.get::<B, D>(param.id) {
                Some(g) => g.into_data().to_vec::<f32>().unwrap(),
                None => vec![0.0; n],
            });
        }
    }
    let mut c = Collect(grads, Vec::new());
    model.visit(&mut c);
    c.1
}

fn assert_close(want: &[Vec<f32>], got: &[Vec<f32>], what: &str) {
    assert_eq!(want.len(), got.len(), "{what}: parameter count");
    let mut largest = 0f32;
    for (a, b) in want.iter().zip(got) {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
        largest = largest.max(scale);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 2e-4 * scale, "{what}: {x} vs {y} (largest {scale})");
        }
    }
    assert!(largest > 1e-3, "{what}: no gradient to compare");
}

/// `world` replicas with `micro` micro-batches each against one device with `world · micro`.
fn replicas_match_one_device(overrides: &[&str], world: usize, micro: usize, loss: ReplicaLoss) {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 20, overrides);
    let n = 7;
    let (reference, inputs) = model_and_batch(&c, n);
    let seed = |j: usize| B::seed(&Default::default(), 1000 + j as u64);

    let want = forward_backward(&reference, &inputs, world * micro, 1.0, &mut |j| seed(j));
    let want_grads = flat_grads(&reference, &want.grads);
    // The one-device passes in micro-batches are what the replicas split among themselves.
    assert_eq!(
        micro_batch_ranges(n, world * micro),
        shares(n, world)
            .into_iter()
            .flat_map(|r| micro_batch_ranges(r.len(), micro)
                .into_iter()
                .map(move |m| r.start + m.start..r.start + m.end))
            .collect::<Vec<_>>()
    );

    BurnCollective::<Inner>::reset();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for (rank, rows) in shares(n, world).into_iter().enumerate() {
            let (model, inputs, tx) = (reference.clone(), inputs.clone(), tx.clone());
            s.spawn(move || {
                let device = Default::default();
                let model = model.fork(&device);
                let comm = BurnCollective::<Inner>::register(rank, world, &device).unwrap();
                let mine = inputs.rows(rows.clone());
                let place = ReplicaRows { rows, total: n };
                let mut reseed = |m: usize| seed(rank * micro + m);
                let out = forward_backward_replica(
                    &model,
                    &mine,
                    &place,
                    micro,
                    1.0,
                    loss,
                    &mut reseed,
                    &comm,
                )
                .unwrap();
                tx.send((rank, out.loss, out.acc_i2t, flat_grads(&model, &out.grads))).unwrap();
            });
        }
    });
    drop(tx);
    let got: Vec<_> = rx.iter().collect();
    assert_eq!(got.len(), world);
    for (rank, loss, acc, grads) in got {
        let what =
            format!("{overrides:?}, {world} replicas × {micro}, {loss:?} loss, replica {rank}");
        assert!(
            (loss - want.loss).abs() < 1e-5 * want.loss.abs(),
            "{what}: {loss} vs {}",
            want.loss
        );
        assert_eq!(acc, want.acc_i2t, "{what}");
        assert_close(&want_grads, &grads, &what);
    }
}

#[test]
fn replicas_give_the_loss_and_gradients_of_one_device() {
    let _serial = common::serial();
    // Dropout on in the heads and the text tower: every replica draws its own micro-batch's
    // masks; the global and the local loss; replicas in micro-batches; uneven shares (7 pairs).
    replicas_match_one_device(&["model.dropout=0.2"], 2, 1, ReplicaLoss::Global);
    replicas_match_one_device(&["model.dropout=0.2"], 2, 1, ReplicaLoss::Local);
    replicas_match_one_device(&["model.dropout=0.2"], 2, 2, ReplicaLoss::Global);
    replicas_match_one_device(&[], 3, 1, ReplicaLoss::Local);
    // The sigmoid loss (a learned bias counted once) and the soft-target loss.
    let sigmoid = ["model.loss=\"sigmoid\"", "model.temperature=0.1"];
    replicas_match_one_device(&sigmoid, 2, 1, ReplicaLoss::Global);
    replicas_match_one_device(&sigmoid, 2, 2, ReplicaLoss::Local);
    replicas_match_one_device(&["model.loss=\"soft-targets\""], 2, 1, ReplicaLoss::Local);
}

/// The step losses and temperatures of two runs agree.
fn same_curve(a: &[StepMetrics], b: &[StepMetrics], what: &str) {
    assert!(!a.is_empty() && a.len() == b.len(), "{what}: {} vs {} steps", a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.step, x.epoch, x.batch), (y.step, y.epoch, y.batch), "{what}");
        assert!(
            (x.loss - y.loss).abs() < 2e-4 * x.loss.abs(),
            "{what}, step {}: {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
        assert!((x.temperature - y.temperature).abs() < 1e-4 * x.temperature, "{what}");
    }
}

fn run(dir: &std::path::Path, name: &str, overrides: &[&str]) -> Vec<StepMetrics> {
    let c = config(dir, 120, overrides);
    let run = RunDir::new(dir.join(name));
    let s = train::<B>(&c, &run, false, &Default::default(), "cpu", &mut Silent).unwrap();
    assert!(s.completed, "{name}");
    steps(&run)
}

#[test]
fn two_devices_train_as_one_device_in_two_micro_batches() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let base = ["train.max_steps=6", "data.augment.horizontal_flip=true"];
    let with =
        |extra: &[&'static str]| -> Vec<&str> { base.iter().chain(extra).copied().collect() };

    let one = run(dir.path(), "one", &with(&["train.micro_batches=2"]));
    let two = run(dir.path(), "two", &with(&["train.devices=[0, 1]"]));
    same_curve(&one, &two, "2 devices");
    assert!(two.iter().all(|m| m.replicas.len() == 2 && m.replicas[1].samples_per_s > 0.0));
    assert!(one.iter().all(|m| m.replicas.is_empty()));
    let local = run(dir.path(), "local", &with(&["train.devices=[0, 1]", "train.local_loss=true"]));
    same_curve(&one, &local, "2 devices, local loss");

    // Micro-batches on each replica; a frozen text tower whose features each replica caches.
    let four =
        run(dir.path(), "four", &with(&["train.micro_batches=4", "model.text_trainable=false"]));
    let two_by_two = run(
        dir.path(),
        "two-by-two",
        &with(&["train.devices=[0, 1]", "train.micro_batches=2", "model.text_trainable=false"]),
    );
    same_curve(&four, &two_by_two, "2 devices × 2 micro-batches, cached text tower");
}

#[test]
fn a_stopped_two_device_run_resumes_with_the_same_loss_curve() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let overrides = ["train.max_steps=8", "train.devices=[0, 1]", "model.dropout=0.2"];
    let c = config(dir.path(), 120, &overrides);
    let straight = RunDir::new(dir.path().join("straight"));
    train::<B>(&c, &straight, false, &Default::default(), "cpu", &mut Silent).unwrap();

    let resumed = RunDir::new(dir.path().join("resumed"));
    let s = train::<B>(&c, &resumed, false, &Default::default(), "cpu", &mut StopAt(3, 0)).unwrap();
    assert!(!s.completed && s.steps == 3);
    let s = train::<B>(&c, &resumed, true, &Default::default(), "cpu", &mut Silent).unwrap();
    assert!(s.completed && s.steps == 8);
    same_curve(&steps(&straight), &steps(&resumed), "resumed on 2 devices");
}

#[test]
fn too_many_devices_for_the_batch_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), 20, &[]);
    let path = dir.path().join("exp.toml");
    let err = clip_train::ExperimentConfig::load(
        &path,
        &["train.devices=[0, 1, 2]".into(), "data.batch_size=2".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("train.devices") && err.contains("exp.toml"), "{err}");
    let err = clip_train::ExperimentConfig::load(&path, &["train.devices=[1, 1]".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("device 1 twice"), "{err}");
    drop(c);
}
