//! `wsup replay --timeline FILE.svg`: the session drawn as SVG, written directly.
//!
//! Time runs left to right; one lane per state (Dialing, RefreshingToken, Backoff,
//! Connected, Terminated) holds a bar for each stretch the machine spent there. Each
//! failure is a red tick across the lanes with its label (`close 1011`, `http 401`,
//! `liveness timeout`) above them; each backoff bar carries its delay, each connected
//! bar its length, and the end its outcome. Meant to be read at a glance: "three 1011s,
//! one token refresh, connected for 4 minutes, then 401".

use std::fmt::Write;

/// One transition, as the machine traced it, at its recorded time.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Microseconds since the recording began.
    pub t: u64,
    pub from: String,
    pub to: String,
    pub event: String,
    pub attempt: Option<u64>,
    pub delay_ms: Option<u64>,
    pub reason: Option<String>,
    /// The line `-v` prints for it (without a time).
    pub line: String,
    /// Shown at `-v` (leaving `Idle`, before the first dial, is not).
    pub shown: bool,
}

/// The lanes, top to bottom, with their colours.
const LANES: [(&str, &str); 5] = [
    ("Dialing", "#6c8ebf"),
    ("RefreshingToken", "#d79b00"),
    ("Backoff", "#e07070"),
    ("Connected", "#4d9a4d"),
    ("Terminated", "#555555"),
];

const WIDTH: f64 = 1100.0;
const LEFT: f64 = 150.0;
const RIGHT: f64 = 40.0;
const TITLE_HEIGHT: f64 = 34.0;
/// Rows of failure labels above the lanes (labels close in time are staggered).
const LABEL_ROW: f64 = 16.0;
const LABEL_ROWS: usize = 4;
const LANE_HEIGHT: f64 = 48.0;
const BAR_HEIGHT: f64 = 20.0;
const AXIS_HEIGHT: f64 = 40.0;
/// Roughly how wide a character of the 11 px labels is, to keep labels apart.
const CHAR_WIDTH: f64 = 6.2;

/// The SVG document for `transitions` (in order, as the replay found them, leaving
/// `Idle` included), the recording ending at `end_t` (µs).
pub fn render(transitions: &[Transition], end_t: u64, title: &str) -> String {
    let last_t = transitions.last().map_or(0, |t| t.t);
    let span = end_t.max(last_t).max(1) as f64;
    let plot = WIDTH - LEFT - RIGHT;
    let x = |t: u64| LEFT + plot * (t as f64 / span);
    let lanes_top = TITLE_HEIGHT + LABEL_ROW * LABEL_ROWS as f64 + 6.0;
    let lane_y = |state: &str| {
        LANES
            .iter()
            .position(|(name, _)| *name == state)
            .map(|i| lanes_top + LANE_HEIGHT * i as f64)
    };
    let lanes_bottom = lanes_top + LANE_HEIGHT * LANES.len() as f64;
    let height = lanes_bottom + AXIS_HEIGHT;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );

    // Lanes: a label and a light band each.
    for (i, (name, _)) in LANES.iter().enumerate() {
        let y = lanes_top + LANE_HEIGHT * i as f64;
        let band = if i % 2 == 0 { "#f4f4f4" } else { "#fbfbfb" };
        let _ = writeln!(
            svg,
            r#"<rect x="{LEFT}" y="{y}" width="{plot}" height="{LANE_HEIGHT}" fill="{band}"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{name}</text>"#,
            LEFT - 8.0,
            y + LANE_HEIGHT / 2.0 + 4.0
        );
    }

    // The stretches spent in each state, as bars.
    let mut state = "Idle";
    let mut since = 0u64;
    let mut backoff_delay: Option<u64> = None;
    let mut bars = String::new();
    // Drawn after every bar, so that a bar never hides the label of the one before it.
    let mut bar_labels = String::new();
    // Per lane, where the last label outside a bar ends, above and below the bars.
    let mut label_ends = [[f64::MIN; 2]; LANES.len()];
    let mut bar = |svg: &mut String,
                   labels: &mut String,
                   state: &str,
                   from: u64,
                   to: u64,
                   delay: Option<u64>| {
        let (Some(y), Some((_, colour))) =
            (lane_y(state), LANES.iter().find(|(name, _)| *name == state))
        else {
            return;
        };
        let x0 = x(from);
        // A stretch too short to see at this scale is still drawn, 3 px wide.
        let w = (x(to) - x0).max(3.0);
        let top = y + (LANE_HEIGHT - BAR_HEIGHT) / 2.0;
        let _ = writeln!(
            svg,
            r##"<rect x="{x0:.1}" y="{top:.1}" width="{w:.1}" height="{BAR_HEIGHT}" fill="{colour}" stroke="#ffffff" stroke-width="1"><title>{state} {} – {}</title></rect>"##,
            clock(from),
            clock(to)
        );
        let label = match (state, delay) {
            ("Backoff", Some(ms)) => Some(format!("{} wait", duration(ms * 1000))),
            ("Connected", _) => Some(duration(to - from)),
            _ => None,
        };
        if let Some(label) = label {
            // Inside the bar when it fits; else above it, or below it when the last
            // label above is in the way (kept inside the picture at the right edge).
            let label_width = label.len() as f64 * CHAR_WIDTH;
            if label_width + 6.0 < w {
                let _ = writeln!(
                    labels,
                    r##"<text x="{:.1}" y="{:.1}" fill="#ffffff">{}</text>"##,
                    x0 + 4.0,
                    top + BAR_HEIGHT / 2.0 + 4.0,
                    escape(&label)
                );
            } else {
                let lane = LANES
                    .iter()
                    .position(|(name, _)| *name == state)
                    .unwrap_or(0);
                let lx = x0.min(WIDTH - 4.0 - label_width);
                let side = label_ends[lane]
                    .iter()
                    .position(|end| lx > *end + 4.0)
                    .unwrap_or(0);
                label_ends[lane][side] = lx + label_width;
                let ly = if side == 0 {
                    top - 3.0
                } else {
                    top + BAR_HEIGHT + 10.0
                };
                let _ = writeln!(
                    labels,
                    r##"<text x="{lx:.1}" y="{ly:.1}" fill="#333333" font-size="10">{}</text>"##,
                    escape(&label)
                );
            }
        }
    };
    for transition in transitions {
        bar(
            &mut bars,
            &mut bar_labels,
            state,
            since,
            transition.t,
            backoff_delay,
        );
        state = lane_of_state(&transition.to);
        since = transition.t;
        backoff_delay = if state == "Backoff" {
            transition.delay_ms
        } else {
            None
        };
    }
    if state == "Terminated" {
        // The end is a moment, not a stretch: a marker with the outcome.
        if let Some(y) = lane_y("Terminated") {
            let cx = x(since);
            let cy = y + LANE_HEIGHT / 2.0;
            let _ = writeln!(
                bars,
                r##"<path d="M {:.1} {cy:.1} L {cx:.1} {:.1} L {:.1} {cy:.1} L {cx:.1} {:.1} Z" fill="#555555"/>"##,
                cx - 7.0,
                cy - 7.0,
                cx + 7.0,
                cy + 7.0
            );
            let reason = transitions
                .last()
                .and_then(|t| t.reason.clone())
                .unwrap_or_else(|| t_event(transitions));
            let anchor = if cx > LEFT + plot * 0.7 {
                "end"
            } else {
                "start"
            };
            let lx = if anchor == "end" {
                cx - 10.0
            } else {
                cx + 10.0
            };
            let _ = writeln!(
                bars,
                r#"<text x="{lx:.1}" y="{:.1}" text-anchor="{anchor}">ended: {}</text>"#,
                cy + 4.0,
                escape(&reason)
            );
        }
    } else {
        bar(
            &mut bars,
            &mut bar_labels,
            state,
            since,
            end_t.max(since),
            backoff_delay,
        );
    }

    // Failures: a tick across the lanes and a label above them, staggered over rows so
    // that failures close in time stay readable.
    let mut row_ends = [f64::MIN; LABEL_ROWS];
    for transition in transitions {
        let Some(reason) = &transition.reason else {
            continue;
        };
        if transition.to == "Terminated" && !is_failure(reason) {
            continue;
        }
        let tx = x(transition.t);
        let label = escape(reason);
        let width = reason.len() as f64 * CHAR_WIDTH;
        let row = row_ends
            .iter()
            .position(|end| tx - width / 2.0 > *end + 4.0)
            .unwrap_or_else(|| {
                // Every row is taken here: the one that frees up first.
                row_ends
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i)
            });
        row_ends[row] = tx + width / 2.0;
        let ly = TITLE_HEIGHT + LABEL_ROW * (row as f64 + 1.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{lanes_bottom:.1}" stroke="#c00000" stroke-width="1" stroke-dasharray="3,2"/>"##,
            ly + 3.0
        );
        let _ = writeln!(
            svg,
            r##"<text x="{tx:.1}" y="{ly:.1}" text-anchor="middle" fill="#c00000">{label}</text>"##
        );
    }
    svg.push_str(&bars);
    svg.push_str(&bar_labels);

    // The time axis.
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{lanes_bottom}" x2="{}" y2="{lanes_bottom}" stroke="#333333"/>"##,
        LEFT + plot
    );
    let step = tick_step(span as u64);
    let mut tick = 0u64;
    while tick as f64 <= span {
        let tx = x(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx:.1}" y1="{lanes_bottom}" x2="{tx:.1}" y2="{}" stroke="#333333"/><text x="{tx:.1}" y="{}" text-anchor="middle">{}</text>"##,
            lanes_bottom + 5.0,
            lanes_bottom + 18.0,
            clock(tick)
        );
        tick += step;
    }
    svg.push_str("</svg>\n");
    svg
}

/// The lane names are static; a state this wsup does not draw maps to "Idle" (no lane).
fn lane_of_state(name: &str) -> &'static str {
    LANES
        .iter()
        .map(|(lane, _)| *lane)
        .find(|lane| *lane == name)
        .unwrap_or("Idle")
}

/// What ended the session when the last transition has no failure (a signal, EOF).
fn t_event(transitions: &[Transition]) -> String {
    transitions
        .last()
        .map_or_else(String::new, |t| t.event.clone())
}

/// A close 1000 or 1001 ends a session normally: no red tick for it.
fn is_failure(reason: &str) -> bool {
    !matches!(reason, "close 1000" | "close 1001")
}

/// A tick every 1, 2 or 5 × 10^k µs, about eight of them.
fn tick_step(span: u64) -> u64 {
    let rough = (span / 8).max(1);
    let mut unit = 1u64;
    loop {
        for m in [1, 2, 5] {
            if unit * m >= rough {
                return unit * m;
            }
        }
        unit *= 10;
    }
}

/// A time since the start, for the axis: `0`, `1.5s`, `2m30s`.
fn clock(t: u64) -> String {
    if t == 0 {
        return "0".into();
    }
    duration(t)
}

/// A length of time (µs) in the unit that reads best.
fn duration(us: u64) -> String {
    let secs = us as f64 / 1e6;
    if secs < 1.0 {
        let ms = us as f64 / 1e3;
        if ms < 10.0 {
            format!("{ms:.1}ms")
        } else {
            format!("{ms:.0}ms")
        }
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64
        )
    }
}

/// Text as XML character data: markup escaped, characters XML 1.0 forbids dropped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(
        t: u64,
        from: &str,
        to: &str,
        reason: Option<&str>,
        delay_ms: Option<u64>,
    ) -> Transition {
        Transition {
            t,
            from: from.into(),
            to: to.into(),
            event: "e".into(),
            attempt: None,
            delay_ms,
            reason: reason.map(Into::into),
            line: String::new(),
            shown: true,
        }
    }

    #[test]
    fn the_timeline_is_xml_that_names_every_state_and_failure() {
        let transitions = [
            transition(0, "Idle", "Dialing", None, None),
            transition(1_000, "Dialing", "Connected", None, None),
            transition(2_000, "Connected", "Backoff", Some("close 1011"), Some(300)),
            transition(302_000, "Backoff", "Dialing", None, None),
            transition(303_000, "Dialing", "Connected", None, None),
            transition(
                240_303_000,
                "Connected",
                "RefreshingToken",
                Some("close 1008"),
                None,
            ),
            transition(240_304_000, "RefreshingToken", "Dialing", None, None),
            transition(
                240_305_000,
                "Dialing",
                "Terminated",
                Some("http 401 <&>"),
                None,
            ),
        ];
        let svg = render(&transitions, 240_305_000, "a \"title\" & <more>");
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        for needle in [
            "Dialing",
            "RefreshingToken",
            "Backoff",
            "Connected",
            "Terminated",
            "close 1011",
            "close 1008",
            "http 401 <&>",
            "300ms wait",
            "4m00s",
        ] {
            assert!(
                texts.iter().any(|t| t.contains(needle)),
                "{needle} in {texts:?}"
            );
        }
    }

    #[test]
    fn durations_read_in_their_best_unit() {
        assert_eq!(duration(1_500), "1.5ms");
        assert_eq!(duration(250_000), "250ms");
        assert_eq!(duration(2_500_000), "2.5s");
        assert_eq!(duration(240_000_000), "4m00s");
        assert_eq!(duration(7_380_000_000), "2h03m");
        assert_eq!(tick_step(8_000_000), 1_000_000);
    }
}
