//! Timestamps and durations as rules see them: RFC 3339 text and Go-style durations.
//!
//! Pure functions only; the current time is always passed in.

use jiff::Timestamp;

/// Parses an RFC 3339 timestamp into seconds since the epoch.
pub fn parse_secs(text: &str) -> Option<f64> {
    let ts: Timestamp = text.trim().parse().ok()?;
    Some(ts.as_second() as f64 + f64::from(ts.subsec_nanosecond()) / 1e9)
}

/// Formats seconds since the epoch as RFC 3339 in UTC with whole seconds (`2026-01-02T03:04:05Z`),
/// the form Kubernetes uses for `metav1.Time`.
pub fn format_secs(secs: f64) -> String {
    let whole = secs.floor() as i64;
    match Timestamp::from_second(whole) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => "1970-01-01T00:00:00Z".to_string(),
    }
}

/// Seconds from `start` to `end` (both seconds since the epoch), never negative: an end before
/// the start, as two machines' clocks can make it (a run's completion time written by another
/// controller, an adopted run), is no time at all rather than negative time.
pub fn elapsed_secs(start: f64, end: f64) -> f64 {
    let secs = end - start;
    if secs.is_finite() && secs > 0.0 {
        secs
    } else {
        0.0
    }
}

/// Formats a duration the way Go's `time.Duration.String()` does after rounding to whole
/// seconds: `0s`, `45s`, `2m0s`, `1h0m0s`, `1h2m3s`. A duration is never negative here: a
/// negative (or non-finite) number of seconds is `0s`, see [`elapsed_secs`].
pub fn go_duration(secs: f64) -> String {
    let total = elapsed_secs(0.0, secs).round() as u64;
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// [`parse_duration`] as a [`std::time::Duration`], for command-line flags.
pub fn parse_std_duration(text: &str) -> Result<std::time::Duration, String> {
    let secs = parse_duration(text)?;
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("duration `{text}` is too long"))
}

/// Parses a Go-style duration (`300ms`, `10s`, `5m`, `1h30m`, `1.5h`) into seconds.
/// A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = t.parse::<f64>() {
        return if n.is_finite() && n >= 0.0 {
            Ok(n)
        } else {
            Err(format!("invalid duration `{text}`"))
        };
    }
    let mut rest = t;
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration `{text}`: missing unit"))?;
        if num_end == 0 {
            return Err(format!(
                "invalid duration `{text}`: expected a number such as `5m` or `1h30m`"
            ));
        }
        let n: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("invalid duration `{text}`"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => {
                return Err(format!(
                    "invalid duration `{text}`: unknown unit `{unit}` (use ns, us, ms, s, m or h)"
                ));
            }
        };
        total += n * factor;
        rest = &rest[unit_end..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_match_go() {
        assert_eq!(go_duration(0.0), "0s");
        assert_eq!(go_duration(45.2), "45s");
        assert_eq!(go_duration(119.6), "2m0s");
        assert_eq!(go_duration(3600.0), "1h0m0s");
        assert_eq!(go_duration(3723.0), "1h2m3s");
        assert_eq!(go_duration(f64::NAN), "0s");
        assert_eq!(go_duration(f64::INFINITY), "0s");
    }

    #[test]
    fn durations_are_never_negative() {
        assert_eq!(go_duration(-5.0), "0s");
        assert_eq!(go_duration(-0.4), "0s");
        assert_eq!(go_duration(-28_811_652.0), "0s");
        assert_eq!(elapsed_secs(100.0, 160.5), 60.5);
        assert_eq!(elapsed_secs(160.0, 100.0), 0.0);
        assert_eq!(elapsed_secs(f64::NAN, 100.0), 0.0);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5m").unwrap(), 300.0);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400.0);
        assert_eq!(parse_duration("1.5h").unwrap(), 5400.0);
        assert_eq!(parse_duration("250ms").unwrap(), 0.25);
        assert_eq!(parse_duration("10").unwrap(), 10.0);
        assert!(
            parse_duration("5 minutes")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("m5").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        let s = parse_secs("2026-11-25T10:00:00Z").unwrap();
        assert_eq!(format_secs(s), "2026-11-25T10:00:00Z");
        assert_eq!(format_secs(s + 0.9), "2026-11-25T10:00:00Z");
        assert!(parse_secs("2026-11-25T10:00:00.5+01:00").is_some());
        assert_eq!(parse_secs("yesterday"), None);
    }
}
