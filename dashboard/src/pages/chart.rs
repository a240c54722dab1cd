//! Charts as inline SVG, drawn on the server: no script, no library.

use crate::format;
use ledger::Won;
use maud::{Markup, html};

/// One bar: a label and its value in won.
pub struct Bar<'a> {
    pub label: &'a str,
    pub won: Won,
}

const WIDTH: i64 = 1200;
const HEIGHT: i64 = 260;
const LEFT: i64 = 70;
const BOTTOM: i64 = 34;
const TOP: i64 = 16;

/// A column chart (periods along the bottom).
pub fn columns(title: &str, bars: &[Bar<'_>]) -> Markup {
    let max = bars.iter().map(|b| b.won).max().unwrap_or(0).max(1);
    let plot_width = WIDTH - LEFT - 10;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let count = i64::try_from(bars.len()).unwrap_or(1).max(1);
    let slot = plot_width / count;
    let bar_width = (slot * 7 / 10).max(2);
    // Label every n-th column so labels never overlap.
    let every = (count * 70 / plot_width.max(1)).max(1);
    html! {
        svg.chart viewBox={"0 0 " (WIDTH) " " (HEIGHT)} role="img" aria-label=(title) {
            title { (title) }
            @for step in 0..=4i64 {
                @let y = TOP + plot_height - plot_height * step / 4;
                line.axis x1=(LEFT) x2=(WIDTH - 10) y1=(y) y2=(y) {}
                text x=(LEFT - 6) y=(y + 4) text-anchor="end" { (short_won(max * step / 4)) }
            }
            @for (index, bar) in bars.iter().enumerate() {
                @let index = i64::try_from(index).unwrap_or(0);
                @let height = plot_height * bar.won.max(0) / max;
                @let x = LEFT + index * slot + (slot - bar_width) / 2;
                rect.bar x=(x) y=(TOP + plot_height - height) width=(bar_width) height=(height) {
                    title { (bar.label) ": " (format::won(bar.won)) }
                }
                @if index % every == 0 {
                    text x=(x + bar_width / 2) y=(HEIGHT - BOTTOM + 16) text-anchor="middle" { (bar.label) }
                }
            }
        }
    }
}

/// A horizontal bar chart (products or machines down the side).
pub fn rows(title: &str, bars: &[Bar<'_>]) -> Markup {
    let max = bars.iter().map(|b| b.won).max().unwrap_or(0).max(1);
    // Drawn for a side column about 420 px wide.
    let width = 420;
    let row_height = 24;
    let label_width = 110;
    let value_width = 90;
    let plot = width - label_width - value_width;
    let height = i64::try_from(bars.len()).unwrap_or(0) * row_height + 8;
    html! {
        svg.chart viewBox={"0 0 " (width) " " (height.max(row_height))} role="img" aria-label=(title) {
            title { (title) }
            @for (index, bar) in bars.iter().enumerate() {
                @let y = i64::try_from(index).unwrap_or(0) * row_height + 4;
                @let width = (plot * bar.won.max(0) / max).max(1);
                text x=(label_width - 8) y=(y + 15) text-anchor="end" { (bar.label) }
                rect.bar x=(label_width) y=(y + 3) width=(width) height=(row_height - 8) rx="3" {
                    title { (bar.label) ": " (format::won(bar.won)) }
                }
                text.value x=(label_width + width + 6) y=(y + 15) { (format::won(bar.won)) }
            }
        }
    }
}

/// `₩1.2M`, `₩35K`, `₩900` for axis labels.
fn short_won(amount: Won) -> String {
    match amount {
        a if a >= 10_000_000 => format!("₩{}M", a / 1_000_000),
        a if a >= 1_000_000 => format!("₩{}.{}M", a / 1_000_000, (a % 1_000_000) / 100_000),
        a if a >= 10_000 => format!("₩{}K", a / 1_000),
        a => format::won(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value() {
        let bars = [
            Bar {
                label: "2026-11",
                won: 1_000,
            },
            Bar {
                label: "2026-12",
                won: 500,
            },
        ];
        let svg = columns("sales", &bars).into_string();
        let plot_height = HEIGHT - TOP - BOTTOM;
        assert!(svg.contains(&format!("height=\"{plot_height}\"")), "{svg}");
        assert!(
            svg.contains(&format!("height=\"{}\"", plot_height / 2)),
            "{svg}"
        );
        assert!(svg.contains("2026-12: ₩500"));
        assert_eq!(short_won(1_250_000), "₩1.2M");
        assert_eq!(short_won(35_000), "₩35K");
        // No data draws an empty chart, never a division by zero.
        assert!(columns("none", &[]).into_string().contains("<svg"));
        assert!(rows("none", &[]).into_string().contains("<svg"));
    }
}
