//! Durations and sizes as operators write them in nginx: `30s`, `500ms`, `2m`, `1h`, `10m` bytes,
//! `8k`. Bare integers are seconds or bytes.
use std::time::Duration;

/// Parses `500ms`, `30s`, `5m`, `1h`, `1d` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a number with a unit, like 30s or 500ms"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: {num:?} is not a number"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86400.0 {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `10m`, `8k`, `1g`, `512` (bytes), case-insensitive, as nginx does.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1024u64),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1024 * 1024),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number of bytes with an optional k, m or g suffix")
    })?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Days since 1970-01-01 as (year, month, day), Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_units_parse() {
        const CASES: &[(&str, u64)] = &[
            ("500ms", 500),
            ("30s", 30_000),
            ("30", 30_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1.5s", 1500),
        ];
        for (text, ms) in CASES {
            assert_eq!(
                parse_duration(text).unwrap().as_millis() as u64,
                *ms,
                "{text}"
            );
        }
        for bad in ["", "s", "10x", "1..2s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn size_units_parse() {
        assert_eq!(parse_size("10m").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_size("8k").unwrap(), 8192);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("10mb").is_err());
        assert!(parse_size("99999999999999999999g").is_err());
    }
}
