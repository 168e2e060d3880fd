//! The comparison page's win-rate chart: the rate as a bar from 0 to 100%, its 95% CI as a
//! whisker, and the 50% line a promotion gate must clear with the CI's lower bound.

/// An SVG of `rate` with its CI.
pub fn win_rate_svg(rate: f64, low: Option<f64>, high: Option<f64>) -> String {
    let (w, h, left, right) = (640.0, 90.0, 20.0, 20.0);
    let x = |v: f64| left + v.clamp(0.0, 1.0) * (w - left - right);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\" id=\"win-chart\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <rect x=\"{left}\" y=\"28\" width=\"{:.1}\" height=\"22\" fill=\"#eef1f5\"/>\
         <rect x=\"{left}\" y=\"28\" width=\"{:.1}\" height=\"22\" fill=\"#2f6fdf\"/>",
        x(1.0) - left,
        x(rate) - left
    );
    if let (Some(lo), Some(hi)) = (low, high) {
        svg += &format!(
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"39\" y2=\"39\" stroke=\"#1d2433\" stroke-width=\"2\"/>\
             <line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"32\" y2=\"46\" stroke=\"#1d2433\" stroke-width=\"2\"/>\
             <line x1=\"{1:.1}\" x2=\"{1:.1}\" y1=\"32\" y2=\"46\" stroke=\"#1d2433\" stroke-width=\"2\"/>",
            x(lo),
            x(hi)
        );
    }
    svg += &format!(
        "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"20\" y2=\"58\" stroke=\"#d62728\" stroke-dasharray=\"4 3\"/>\
         <text x=\"{0:.1}\" y=\"14\" text-anchor=\"middle\" fill=\"#d62728\">50%</text>\
         <text x=\"{left}\" y=\"76\">0%</text><text x=\"{1:.1}\" y=\"76\" text-anchor=\"end\">100%</text>\
         <text x=\"{2:.1}\" y=\"76\" text-anchor=\"middle\">win rate {3:.1}%</text></svg>",
        x(0.5),
        x(1.0),
        x(rate),
        rate * 100.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_and_whisker_sit_where_the_numbers_say() {
        let svg = win_rate_svg(0.75, Some(0.6), Some(0.9));
        // 20 + 0.75 * 600 = 470 wide from 20: width 450.
        assert!(svg.contains("width=\"450.0\""), "{svg}");
        assert!(svg.contains("x1=\"380.0\" x2=\"560.0\""), "{svg}");
        assert!(svg.contains("win rate 75.0%"));
        assert!(!win_rate_svg(0.5, None, None).contains("stroke-width=\"2\""));
    }
}
