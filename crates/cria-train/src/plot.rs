//! loss.svg: a hand-written SVG line plot of the training loss (and the eval loss, as points
//! joined by a dashed line) against the optimizer step (`cria finetune`) or any other count,
//! e.g. tokens (`cria pretrain`, [`loss_svg_x`]). No plotting crate: axes, five ticks per axis,
//! two polylines, a legend.

use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 48.0;

/// The SVG text of `train` (step, loss) and `eval` (step, loss); non-finite losses are left out.
pub fn loss_svg(train: &[(u64, f64)], eval: &[(u64, f64)]) -> String {
    loss_svg_x(train, eval, "step")
}

/// A tick label: the integer below 100000, else 3 significant digits and k / M / G.
fn tick(v: f64) -> String {
    let v = v.round();
    if v.abs() < 1e5 {
        return format!("{v}");
    }
    let (d, u) = [(1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|&(d, _)| v.abs() >= d)
        .unwrap_or((1.0, ""));
    let x = v / d;
    let prec = if x.abs() >= 100.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{x:.prec$}{u}")
}

/// As [`loss_svg`], the x values being `x_label` (e.g. "tokens"): (x, loss) pairs.
pub fn loss_svg_x(train: &[(u64, f64)], eval: &[(u64, f64)], x_label: &str) -> String {
    let pts = |v: &[(u64, f64)]| -> Vec<(f64, f64)> {
        v.iter()
            .filter(|(_, l)| l.is_finite())
            .map(|&(s, l)| (s as f64, l))
            .collect()
    };
    let (tr, ev) = (pts(train), pts(eval));
    let all = tr.iter().chain(&ev);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-9 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = 0.05 * (y1 - y0);
    let (y0, y1) = ((y0 - pad).max(0.0f64.min(y0)), y1 + pad);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let sy = |y: f64| TOP + (y1 - y) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let (bx, by) = (H - BOTTOM, W - RIGHT);
    let _ = writeln!(
        s,
        r##"<path d="M{LEFT} {TOP} V{bx} H{by}" fill="none" stroke="#333"/>"##
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let xv = x0 + f * (x1 - x0);
        let yv = y0 + f * (y1 - y0);
        let (px, py) = (sx(xv), sy(yv));
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{bx}" x2="{px:.1}" y2="{}" stroke="#333"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            bx + 4.0,
            bx + 18.0,
            tick(xv)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{py:.1}" x2="{LEFT}" y2="{py:.1}" stroke="#333"/><line x1="{LEFT}" y1="{py:.1}" x2="{by}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{yv:.3}</text>"##,
            LEFT - 4.0,
            LEFT - 6.0,
            py + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">{x_label}</text><text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">loss</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        H - 8.0,
        H / 2.0,
        H / 2.0
    );
    let line = |v: &[(f64, f64)]| -> String {
        v.iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !tr.is_empty() {
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
            line(&tr)
        );
    }
    if !ev.is_empty() {
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="5,3" points="{}"/>"##,
            line(&ev)
        );
        for &(x, y) in &ev {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#d62728"/>"##,
                sx(x),
                sy(y)
            );
        }
    }
    let lx = W - RIGHT - 130.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" y1="{TOP}" x2="{}" y2="{TOP}" stroke="#1f77b4" stroke-width="2"/><text x="{}" y="{}">train loss</text>"##,
        lx + 20.0,
        lx + 26.0,
        TOP + 4.0
    );
    if !ev.is_empty() {
        let _ = writeln!(
            s,
            r##"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="#d62728" stroke-width="2" stroke-dasharray="5,3"/><text x="{}" y="{}">eval loss</text>"##,
            TOP + 16.0,
            lx + 20.0,
            TOP + 16.0,
            lx + 26.0,
            TOP + 20.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_the_x_label() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(99999.4), "99999");
        assert_eq!(tick(131072.0), "131k");
        assert_eq!(tick(2_500_000.0), "2.50M");
        assert_eq!(tick(41_900_000.0), "41.9M");
        assert_eq!(tick(3e9), "3.00G");
        let s = loss_svg_x(&[(0, 3.0), (4096, 2.0)], &[(4096, 2.5)], "tokens");
        assert!(
            s.contains(">tokens</text>") && s.contains("eval loss"),
            "{s}"
        );
        assert_eq!(s.matches("<polyline").count(), 2);
        // The step plot finetune writes is unchanged: "step" on the axis, integer ticks.
        let s = loss_svg(&[(1, 3.0), (9, 2.0)], &[]);
        assert!(s.contains(">step</text>") && s.contains(">9</text>") && !s.contains("eval loss"));
    }
}
