//! Rows of figures: one per measured thing, with its same-run baseline, the
//! ratio between them and the target the issue sets, printed as JSON lines
//! (`--json`) or as a table.

use std::time::Duration;

use serde::Serialize;

/// What a row must reach.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// `ratio` at most this (latencies against their baseline).
    RatioAtMost(f64),
    /// `ratio` at least this (rates against their baseline).
    RatioAtLeast(f64),
    /// `value` below this, in the row's unit.
    Below(f64),
    /// `value` at least this, in the row's unit.
    AtLeast(f64),
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::RatioAtMost(r) => format!("ratio <= {r}"),
            Target::RatioAtLeast(r) => format!("ratio >= {r}"),
            Target::Below(v) => format!("value < {v}"),
            Target::AtLeast(v) => format!("value >= {v}"),
        }
    }

    fn met(self, value: Option<f64>, ratio: Option<f64>) -> Option<bool> {
        match self {
            Target::RatioAtMost(r) => ratio.map(|x| x <= r),
            Target::RatioAtLeast(r) => ratio.map(|x| x >= r),
            Target::Below(v) => value.map(|x| x < v),
            Target::AtLeast(v) => value.map(|x| x >= v),
        }
    }
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub row: String,
    /// Mandate's figure; `null` when the engine does not support the thing
    /// measured (see `note`).
    pub value: Option<f64>,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    pub unit: &'static str,
    pub samples: usize,
    /// The sizes this row was measured at.
    pub size: String,
    pub target: Option<String>,
    pub met: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    /// A figure with a baseline; the ratio is value / baseline.
    pub fn new(
        scenario: &'static str,
        row: impl Into<String>,
        value: f64,
        baseline: Option<f64>,
        unit: &'static str,
        samples: usize,
        size: impl Into<String>,
    ) -> Self {
        let ratio = baseline.filter(|b| *b > 0.0).map(|b| round(value / b));
        Self {
            scenario,
            row: row.into(),
            value: Some(round(value)),
            baseline: baseline.map(round),
            ratio,
            unit,
            samples,
            size: size.into(),
            target: None,
            met: None,
            note: None,
        }
    }

    /// A row for something the engine under test does not support.
    pub fn unsupported(
        scenario: &'static str,
        row: impl Into<String>,
        unit: &'static str,
        size: impl Into<String>,
        why: impl Into<String>,
    ) -> Self {
        Self {
            value: None,
            ratio: None,
            note: Some(why.into()),
            ..Self::new(scenario, row, 0.0, None, unit, 0, size)
        }
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target.describe());
        self.met = target.met(self.value, self.ratio);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Prints rows as they are measured.
pub struct Printer {
    json: bool,
}

impl Printer {
    pub fn new(json: bool) -> Self {
        if !json {
            println!(
                "{:<10} {:<44} {:>12} {:>12} {:>7} {:<6} {:>8} {:<30} {:<22} note",
                "scenario",
                "row",
                "value",
                "baseline",
                "ratio",
                "unit",
                "samples",
                "size",
                "target"
            );
        }
        Self { json }
    }

    pub fn print(&self, row: &Row) {
        if self.json {
            match serde_json::to_string(row) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("cannot encode row {}: {e}", row.row),
            }
            return;
        }
        let num = |v: Option<f64>| v.map_or("-".to_string(), fmt_num);
        let target = match (&row.target, row.met) {
            (Some(t), Some(true)) => format!("{t} (met)"),
            (Some(t), Some(false)) => format!("{t} (MISSED)"),
            (Some(t), None) => t.clone(),
            (None, _) => String::new(),
        };
        println!(
            "{:<10} {:<44} {:>12} {:>12} {:>7} {:<6} {:>8} {:<30} {:<22} {}",
            row.scenario,
            row.row,
            num(row.value),
            num(row.baseline),
            row.ratio.map_or("-".to_string(), |r| format!("{r:.2}")),
            row.unit,
            row.samples,
            row.size,
            target,
            row.note.as_deref().unwrap_or("")
        );
    }
}

/// Three decimals are more than any of these figures can claim.
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Latencies of one kind of operation.
#[derive(Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p` quantile (0..=1), in microseconds; 0 when empty.
    pub fn quantile_us(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let mut v = self.0.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1e6
    }

    pub fn p50_us(&self) -> f64 {
        self.quantile_us(0.5)
    }

    pub fn p99_us(&self) -> f64 {
        self.quantile_us(0.99)
    }
}

/// Operations per second.
pub fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}
