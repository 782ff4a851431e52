//! Durations on the command line: an integer with a unit, e.g. `90s`, `15m`, `24h`, `90d`.

use std::time::Duration;

/// Parses `<n><unit>` with unit s, m, h or d (bounded to 100 years).
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 30s, 15m, 24h, 90d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    let secs = n.checked_mul(mult).filter(|&v| v <= 100 * 365 * 86400);
    secs.map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("90d"), Ok(Duration::from_secs(90 * 86400)));
        for bad in ["", "h", "10", "10w", "-1h", "99999999999999999999d", "1.5h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
