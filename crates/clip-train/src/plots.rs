//! `curves.png`: the run's metrics as charts, drawn from its JSONL files.

use clip_plot::{render_panels, Panel, Series};

use crate::checkpoint::RunDir;
use crate::error::{Result, TrainError};
use crate::metrics::{read_jsonl, EpochMetrics, StepMetrics};

/// Draws loss, recall@k, learning rate and temperature/accuracy from `metrics/*.jsonl`.
pub fn write_curves(run: &RunDir) -> Result<()> {
    let steps: Vec<StepMetrics> = read_jsonl(&run.step_metrics());
    let epochs: Vec<EpochMetrics> = read_jsonl(&run.epoch_metrics());
    if steps.is_empty() {
        return Ok(());
    }
    let s = |name: &str, f: &dyn Fn(&StepMetrics) -> f64| Series {
        name: name.into(),
        points: steps.iter().map(|m| (m.step as f64, f(m))).collect(),
    };
    let e = |name: &str, f: &dyn Fn(&EpochMetrics) -> f64| Series {
        name: name.into(),
        points: epochs.iter().map(|m| (m.step as f64, f(m))).collect(),
    };
    let eo = |name: &str, f: &dyn Fn(&EpochMetrics) -> Option<f64>| Series {
        name: name.into(),
        points: epochs.iter().filter_map(|m| f(m).map(|v| (m.step as f64, v))).collect(),
    };
    let mut recall = vec![
        e("text→image R@1", &|m| m.val.retrieval.t2i_r1),
        e("text→image R@5", &|m| m.val.retrieval.t2i_r5),
        e("image→text R@1", &|m| m.val.retrieval.i2t_r1),
        e("image→text R@5", &|m| m.val.retrieval.i2t_r5),
    ];
    let mut recall_title = "validation retrieval recall";
    if epochs.iter().any(|m| m.val.zero_shot_top1.is_some() || m.val.label_retrieval.is_some()) {
        // Class-labelled data: instance recall is near chance by construction (captions repeat),
        // so show what is meaningful there.
        recall_title = "validation: zero-shot and class-level recall";
        recall = vec![
            eo("zero-shot top-1", &|m| m.val.zero_shot_top1),
            eo("class text→image R@1", &|m| m.val.label_retrieval.map(|r| r.t2i_r1)),
            eo("class image→text R@1", &|m| m.val.label_retrieval.map(|r| r.i2t_r1)),
        ];
    }
    let panels = vec![
        Panel {
            title: "loss".into(),
            x_label: "step".into(),
            series: vec![s("train (per step)", &|m| m.loss), e("validation", &|m| m.val.loss)],
        },
        Panel { title: recall_title.into(), x_label: "step".into(), series: recall },
        Panel {
            title: "in-batch accuracy".into(),
            x_label: "step".into(),
            series: vec![
                s("train image→text", &|m| m.acc_i2t),
                s("train text→image", &|m| m.acc_t2i),
                e("val image→text", &|m| m.val.acc_i2t),
            ],
        },
        Panel {
            title: "learning rate and temperature".into(),
            x_label: "step".into(),
            series: vec![s("lr × 1000", &|m| m.lr * 1e3), s("temperature", &|m| m.temperature)],
        },
    ];
    let png = render_panels(&panels, 1400, 900)
        .map_err(|source| TrainError::Plot { path: run.curves(), source })?;
    clip_data::fs::write_atomic(&run.curves(), &png)?;
    Ok(())
}
