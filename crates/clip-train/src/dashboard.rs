//! The live terminal dashboard (ratatui): loss curves, recall@k per epoch, learning rate and
//! temperature, throughput, progress and ETA, the last checkpoint; `q` stops gracefully
//! (checkpoint, then exit). When stdout is not a terminal, [`crate::progress::PlainProgress`] prints
//! lines instead.

use std::path::Path;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::crossterm::ExecutableCommand;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Cell, Chart, Dataset, Gauge, GraphType, List, ListItem, Paragraph, Row,
    Table,
};
use ratatui::{Frame, Terminal};

use crate::metrics::{EpochMetrics, StepMetrics};
use crate::observer::{CheckpointKind, Observer, RunInfo, TrainSummary};
use crate::progress::{fmt_duration, micro_batches_note};

/// Everything the dashboard shows; updated by the observer callbacks, drawn by [`render`].
#[derive(Debug, Clone, Default)]
pub struct DashboardState {
    pub info: Option<RunInfo>,
    pub steps: Vec<StepMetrics>,
    pub epochs: Vec<EpochMetrics>,
    pub events: Vec<String>,
    pub last_checkpoint: Option<String>,
    pub stopping: bool,
    pub finished: bool,
}

impl DashboardState {
    fn event(&mut self, msg: String) {
        self.events.push(msg);
        if self.events.len() > 200 {
            self.events.drain(..100);
        }
    }
}

/// Draws the whole dashboard into `frame`.
pub fn render(frame: &mut Frame, state: &DashboardState) {
    let area = frame.area();
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(3),
            Constraint::Min(10),
            Constraint::Length(9),
            Constraint::Length(1),
        ])
        .split(area);
    render_progress(frame, rows[0], state);
    let middle = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
        .split(rows[1]);
    render_loss(frame, middle[0], state);
    render_recall(frame, middle[1], state);
    let bottom = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(40), Constraint::Percentage(60)])
        .split(rows[2]);
    render_stats(frame, bottom[0], state);
    render_events(frame, bottom[1], state);
    let help = if state.finished {
        "finished"
    } else if state.stopping {
        "stopping: saving a checkpoint after this step..."
    } else {
        "q: stop (checkpoint, then exit)"
    };
    frame.render_widget(
        Paragraph::new(Line::from(Span::styled(help, Style::default().fg(Color::DarkGray)))),
        rows[3],
    );
}

fn render_progress(frame: &mut Frame, area: Rect, state: &DashboardState) {
    let title = match &state.info {
        Some(i) => format!(" clip train · {} · {} · {} ", i.run_dir, i.backend, i.precision),
        None => " clip train ".into(),
    };
    let (ratio, label) = match (state.steps.last(), &state.info) {
        (Some(m), _) => (
            m.step as f64 / m.total_steps.max(1) as f64,
            format!(
                "epoch {}/{} · step {}/{} · {:.1} samples/s · elapsed {} · ETA {}",
                m.epoch + 1,
                state.info.as_ref().map_or(0, |i| i.epochs),
                m.step,
                m.total_steps,
                m.samples_per_s,
                fmt_duration(m.elapsed_s),
                fmt_duration(m.eta_s)
            ),
        ),
        (None, Some(i)) => {
            (0.0, format!("starting: {} training pairs, {} steps", i.train_pairs, i.total_steps))
        }
        (None, None) => (0.0, "starting".into()),
    };
    let gauge = Gauge::default()
        .block(Block::default().borders(Borders::ALL).title(title))
        .gauge_style(Style::default().fg(Color::Cyan))
        .ratio(ratio.clamp(0.0, 1.0))
        .label(label);
    frame.render_widget(gauge, area);
}

/// At most `max` points, keeping the shape (every k-th point, plus the last).
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points;
    }
    let k = points.len().div_ceil(max);
    let last = *points.last().expect("non-empty");
    let mut v: Vec<(f64, f64)> = points.into_iter().step_by(k).collect();
    v.push(last);
    v
}

fn bounds(series: &[&[(f64, f64)]]) -> ([f64; 2], [f64; 2]) {
    let mut x = [f64::MAX, f64::MIN];
    let mut y = [f64::MAX, f64::MIN];
    for s in series {
        for &(a, b) in s.iter().filter(|(a, b)| a.is_finite() && b.is_finite()) {
            x = [x[0].min(a), x[1].max(a)];
            y = [y[0].min(b), y[1].max(b)];
        }
    }
    if x[0] > x[1] {
        return ([0.0, 1.0], [0.0, 1.0]);
    }
    if x[1] - x[0] < 1e-9 {
        x[1] = x[0] + 1.0;
    }
    let pad = ((y[1] - y[0]) * 0.05).max(1e-6);
    (x, [y[0] - pad, y[1] + pad])
}

fn axis_labels(b: [f64; 2], digits: usize) -> Vec<Span<'static>> {
    vec![
        Span::raw(format!("{:.*}", digits, b[0])),
        Span::raw(format!("{:.*}", digits, (b[0] + b[1]) / 2.0)),
        Span::raw(format!("{:.*}", digits, b[1])),
    ]
}

fn render_loss(frame: &mut Frame, area: Rect, state: &DashboardState) {
    let width = (area.width as usize).max(10) * 2;
    let train = thin(state.steps.iter().map(|m| (m.step as f64, m.loss)).collect(), width);
    let val: Vec<(f64, f64)> = state.epochs.iter().map(|m| (m.step as f64, m.val.loss)).collect();
    let (xb, yb) = bounds(&[&train, &val]);
    let datasets = vec![
        Dataset::default()
            .name("train")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Cyan))
            .data(&train),
        Dataset::default()
            .name("val")
            .marker(Marker::Dot)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Yellow))
            .data(&val),
    ];
    let chart = Chart::new(datasets)
        .block(Block::default().borders(Borders::ALL).title(" loss "))
        .x_axis(Axis::default().title("step").bounds(xb).labels(axis_labels(xb, 0)))
        .y_axis(Axis::default().bounds(yb).labels(axis_labels(yb, 2)));
    frame.render_widget(chart, area);
}

fn render_recall(frame: &mut Frame, area: Rect, state: &DashboardState) {
    let header = Row::new(["step", "val loss", "t→i R@1", "R@5", "R@10", "i→t R@1", "R@5", "R@10"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let pct = |v: f64| format!("{:.1}", v * 100.0);
    let rows: Vec<Row> = state
        .epochs
        .iter()
        .rev()
        .take(area.height.saturating_sub(3) as usize)
        .map(|m| {
            let r = &m.val.retrieval;
            Row::new(vec![
                Cell::from(m.step.to_string()),
                Cell::from(format!("{:.3}", m.val.loss)),
                Cell::from(pct(r.t2i_r1)),
                Cell::from(pct(r.t2i_r5)),
                Cell::from(pct(r.t2i_r10)),
                Cell::from(pct(r.i2t_r1)),
                Cell::from(pct(r.i2t_r5)),
                Cell::from(pct(r.i2t_r10)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(5),
    ];
    let chance = state.info.as_ref().map(|i| 100.0 / i.val_images.max(1) as f64).unwrap_or(0.0);
    let table = Table::new(rows, widths).header(header).block(
        Block::default()
            .borders(Borders::ALL)
            .title(format!(" validation recall@k, % (R@1 by chance {chance:.2}) ")),
    );
    frame.render_widget(table, area);
}

fn render_stats(frame: &mut Frame, area: Rect, state: &DashboardState) {
    let mut lines = Vec::new();
    if let Some(m) = state.steps.last() {
        lines.push(Line::from(format!("loss         {:.4}", m.loss)));
        lines.push(Line::from(format!(
            "in-batch acc i→t {:.1}%  t→i {:.1}%",
            m.acc_i2t * 100.0,
            m.acc_t2i * 100.0
        )));
        lines.push(Line::from(format!("lr           {:.3e}", m.lr)));
        lines.push(Line::from(format!("temperature  {:.4}", m.temperature)));
        if let Some(g) = m.grad_norm {
            lines.push(Line::from(format!("grad norm    {g:.3}")));
        }
        if let Some(s) = m.loss_scale {
            lines.push(Line::from(format!("loss scale   {s:.0} ({} skipped)", m.skipped_steps)));
        }
        lines.push(Line::from(format!("throughput   {:.1} samples/s", m.samples_per_s)));
        if !m.replicas.is_empty() {
            lines.push(Line::from(crate::progress::replicas_line(m)));
        }
    }
    if let Some(i) = &state.info {
        lines.push(Line::from(format!(
            "params {:.1}M · batch {}{} · {} pairs",
            i.parameters as f64 / 1e6,
            i.batch_size,
            micro_batches_note(i),
            i.train_pairs
        )));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" now ")),
        area,
    );
}

fn render_events(frame: &mut Frame, area: Rect, state: &DashboardState) {
    let mut items: Vec<ListItem> = Vec::new();
    if let Some(c) = &state.last_checkpoint {
        items.push(ListItem::new(Line::from(Span::styled(
            format!("last checkpoint: {c}"),
            Style::default().fg(Color::Green),
        ))));
    }
    let room = area.height.saturating_sub(2 + items.len() as u16) as usize;
    let start = state.events.len().saturating_sub(room);
    items.extend(state.events[start..].iter().map(|e| ListItem::new(e.as_str())));
    frame.render_widget(
        List::new(items).block(Block::default().borders(Borders::ALL).title(" events ")),
        area,
    );
}

impl DashboardState {
    fn apply_start(&mut self, info: &RunInfo) {
        self.steps = info.history_steps.clone();
        self.epochs = info.history_epochs.clone();
        self.info = Some(info.clone());
        self.event(format!("run {} on {}", info.run_dir, info.backend));
    }
}

/// The interactive dashboard: alternate screen, raw mode, redraws at most 5 times a second.
pub struct Dashboard {
    terminal: Terminal<ratatui::backend::CrosstermBackend<std::io::Stdout>>,
    state: DashboardState,
    last_draw: Instant,
}

impl Dashboard {
    /// Takes over the terminal (restored on drop, and on panic).
    pub fn new() -> std::io::Result<Self> {
        enable_raw_mode()?;
        std::io::stdout().execute(EnterAlternateScreen)?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        let terminal = Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
        Ok(Self {
            terminal,
            state: DashboardState::default(),
            last_draw: Instant::now() - Duration::from_secs(1),
        })
    }

    fn draw(&mut self, force: bool) {
        if !force && self.last_draw.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_draw = Instant::now();
        let state = &self.state;
        let _ = self.terminal.draw(|f| render(f, state));
    }

    /// Reads pending key presses; `q`, Esc or Ctrl-C ask for a graceful stop.
    fn poll_keys(&mut self) {
        while event::poll(Duration::ZERO).unwrap_or(false) {
            if let Ok(Event::Key(k)) = event::read() {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if k.kind == KeyEventKind::Press
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                {
                    if !self.state.stopping {
                        self.state.event("stop requested: checkpointing after this step".into());
                    }
                    self.state.stopping = true;
                    self.draw(true);
                }
            }
        }
    }
}

/// Leaves raw mode and the alternate screen (safe to call when neither is on).
pub fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = std::io::stdout().execute(LeaveAlternateScreen);
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        restore_terminal();
        let _ = self.terminal.show_cursor();
    }
}

impl Observer for Dashboard {
    fn on_start(&mut self, info: &RunInfo) {
        self.state.apply_start(info);
        self.draw(true);
    }
    fn on_step(&mut self, m: &StepMetrics) {
        self.state.steps.push(m.clone());
        self.poll_keys();
        self.draw(false);
    }
    fn on_epoch(&mut self, m: &EpochMetrics) {
        self.state.event(format!(
            "{}: val loss {:.4}, t→i R@1 {:.1}%, i→t R@1 {:.1}%{}",
            m.label(),
            m.val.loss,
            m.val.retrieval.t2i_r1 * 100.0,
            m.val.retrieval.i2t_r1 * 100.0,
            m.val
                .zero_shot_top1
                .map_or(String::new(), |z| format!(", zero-shot {:.1}%", z * 100.0))
        ));
        self.state.epochs.push(m.clone());
        self.draw(true);
    }
    fn on_checkpoint(&mut self, path: &Path, kind: CheckpointKind) {
        self.state.last_checkpoint = Some(format!("{kind}: {}", path.display()));
        if kind == CheckpointKind::Best {
            let step = self.state.steps.last().map_or(0, |m| m.step);
            self.state.event(format!("best model so far: step {step}"));
        }
        self.draw(true);
    }
    fn on_message(&mut self, msg: &str) {
        self.state.event(msg.to_string());
        self.draw(true);
    }
    fn should_stop(&mut self) -> bool {
        self.poll_keys();
        self.state.stopping
    }
    fn on_finish(&mut self, _summary: &TrainSummary) {
        self.state.finished = true;
        self.draw(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::test_metrics::{epoch, step};
    use ratatui::backend::TestBackend;

    fn state() -> DashboardState {
        let mut s = DashboardState {
            steps: (1..=20).map(|i| step(i, 4.0 - i as f64 * 0.1)).collect(),
            ..Default::default()
        };
        s.epochs.push(epoch());
        s.last_checkpoint = Some("epoch: runs/x/checkpoints/step-000010".into());
        s.events.push("validating epoch 1".into());
        s
    }

    fn text(backend: &TestBackend) -> String {
        let buf = backend.buffer();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn renders_progress_curves_recall_and_checkpoint() {
        let mut terminal = Terminal::new(TestBackend::new(120, 32)).unwrap();
        terminal.draw(|f| render(f, &state())).unwrap();
        let screen = text(terminal.backend());
        for want in [
            "step 20/40",
            "123.4 samples/s",
            "ETA 2m10s",
            " loss ",
            "12.3",
            "45.6",
            "step-000010",
            "q: stop",
            "temperature  0.0700",
        ] {
            assert!(screen.contains(want), "missing {want:?} in\n{screen}");
        }
        // The loss chart has plotted points (braille cells).
        assert!(screen.chars().any(|c| ('\u{2800}'..='\u{28FF}').contains(&c) && c != '\u{2800}'));
    }

    #[test]
    fn renders_in_a_small_terminal_without_panicking() {
        let mut terminal = Terminal::new(TestBackend::new(30, 12)).unwrap();
        terminal.draw(|f| render(f, &state())).unwrap();
        terminal.draw(|f| render(f, &DashboardState::default())).unwrap();
    }
}
