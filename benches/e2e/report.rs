//! The table and the JSON: one row per comparison, notes, raw data; medians and percentiles.

use crate::Settings;
use serde_json::{json, Value};
use std::time::Duration;

/// One line of the table.
struct Row {
    section: &'static str,
    what: String,
    wsup: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    pass: Option<bool>,
}

#[derive(Default)]
pub(crate) struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    pub(crate) data: serde_json::Map<String, Value>,
}

impl Report {
    #[allow(clippy::too_many_arguments)] // one per column of the table
    pub(crate) fn row(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        wsup: impl Into<String>,
        baseline: impl Into<String>,
        ratio: Option<f64>,
        target: impl Into<String>,
        pass: Option<bool>,
    ) {
        self.rows.push(Row {
            section,
            what: what.into(),
            wsup: wsup.into(),
            baseline: baseline.into(),
            ratio,
            target: target.into(),
            pass,
        });
    }

    pub(crate) fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("note: {text}");
        self.notes.push(text);
    }

    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("| section | measurement | wsup | baseline | ratio | target | met |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let ratio = r.ratio.map_or("—".to_owned(), |x| format!("{x:.2}×"));
            let pass = match r.pass {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.section, r.what, r.wsup, r.baseline, ratio, r.target, pass
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }

    pub(crate) fn json(&self, settings: &Settings, machine: Value, elapsed: Duration) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "section": r.section,
                    "measurement": r.what,
                    "wsup": r.wsup,
                    "baseline": r.baseline,
                    "ratio": r.ratio,
                    "target": r.target,
                    "met": r.pass,
                })
            })
            .collect();
        json!({
            "command": if settings.quick { "WSUP_BENCH_QUICK=1 cargo bench --bench e2e" } else { "cargo bench --bench e2e" },
            "settings": format!("{settings:?}"),
            "machine": machine,
            "elapsed_s": elapsed.as_secs_f64(),
            "rows": rows,
            "notes": self.notes,
            "data": Value::Object(self.data.clone()),
        })
    }
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

pub(crate) fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((values.len() - 1) as f64 * p).round() as usize;
    values[index]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
