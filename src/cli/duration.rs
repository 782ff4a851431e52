//! Durations on the command line, read by jiff: `90s`, `15m`, `24h`, `90d`, combinations such
//! as `1h30m` or `1.5h` (jiff's friendly format), or ISO 8601 (`PT1H`). Days are 24 hours;
//! months and years, whose length varies, are refused.

use std::time::Duration;

/// Longest duration accepted (100 years of 24-hour days).
pub const MAX: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses a non-negative duration of at most [`MAX`].
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let span: jiff::Span = s
        .parse()
        .map_err(|e| format!("{s:?}: expected e.g. 30s, 15m, 24h, 90d ({e})"))?;
    if span.is_negative() {
        return Err(format!("{s:?}: must not be negative"));
    }
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(format!(
            "{s:?}: months and years vary in length; use days (d) or smaller units"
        ));
    }
    let too_long = || format!("{s:?}: too long (at most 100 years)");
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| too_long())?;
    Duration::try_from(signed)
        .ok()
        .filter(|d| *d <= MAX)
        .ok_or_else(too_long)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        for (text, secs) in [
            ("90s", 90),
            ("24h", 86_400),
            ("90d", 90 * 86_400),
            (" 15m ", 900),
            ("1h30m", 5_400),
            ("1.5h", 5_400),
            ("2w", 14 * 86_400),
            ("PT2H", 7_200),
            ("36500d", 100 * 365 * 86_400),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for (bad, why) in [
            ("", "expected"),
            ("h", "expected"),
            ("10", "expected"),
            ("-1h", "negative"),
            ("1y", "vary in length"),
            ("2mo", "vary in length"),
            ("36501d", "too long"),
            ("99999999999999999999d", "expected"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
