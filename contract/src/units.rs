//! Amounts of memory as people write them (`512M`, `4G`, `16GB`, `1.5T`), and spans of time
//! (`90s`, `30m`, `2h`, `1h30m`, `1d`).

/// Bytes in an amount of memory; `None` when it is not one or does not fit in 64 bits.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TB" | "TIB" => 1024.0_f64.powi(4),
        _ => return None,
    };
    let bytes = num * mult;
    // u64::MAX as f64 rounds up to 2^64, so compare strictly below it.
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// `16.0 GiB`-style display of a byte count.
pub fn show_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds in a span of time written as `90`, `90s`, `30m`, `2h`, `1h30m` or `1d` (parts in
/// decreasing units); `None` when it is not one.
pub fn parse_seconds(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    if t.is_empty() {
        return None;
    }
    if let Ok(n) = t.parse::<u64>() {
        return Some(n);
    }
    let (mut total, mut number, mut last_unit) = (0u64, String::new(), u64::MAX);
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        if number.is_empty() || unit >= last_unit {
            return None;
        }
        total = total.checked_add(number.parse::<u64>().ok()?.checked_mul(unit)?)?;
        number.clear();
        last_unit = unit;
    }
    number.is_empty().then_some(total)
}

/// Seconds in a span of time as Slurm writes it (`sbatch --time`, `squeue -o %L`): `MM`,
/// `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM` or `D-HH:MM:SS`; `None` for `UNLIMITED`,
/// `NOT_SET`, `INVALID` or anything else.
pub fn parse_slurm_time(text: &str) -> Option<u64> {
    let t = text.trim();
    let (days, rest) = match t.split_once('-') {
        Some((d, rest)) => (Some(d.parse::<u64>().ok()?), rest),
        None => (None, t),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    let (h, m, s) = match (days.is_some(), parts.as_slice()) {
        (false, [m]) => (0, *m, 0),
        (false, [m, s]) => (0, *m, *s),
        (_, [h, m, s]) => (*h, *m, *s),
        (true, [h]) => (*h, 0, 0),
        (true, [h, m]) => (*h, *m, 0),
        _ => return None,
    };
    days.unwrap_or(0)
        .checked_mul(86_400)?
        .checked_add(h.checked_mul(3_600)?)?
        .checked_add(m.checked_mul(60)?)?
        .checked_add(s)
}

/// `1h30m`-style display of seconds.
pub fn show_seconds(s: u64) -> String {
    let mut out = String::new();
    let (d, h, m, sec) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    for (v, name) in [(d, "d"), (h, "h"), (m, "m"), (sec, "s")] {
        if v > 0 {
            out.push_str(&format!("{v}{name}"));
        }
    }
    if out.is_empty() {
        "0s".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_of_time() {
        assert_eq!(parse_seconds("90"), Some(90));
        assert_eq!(parse_seconds("90s"), Some(90));
        assert_eq!(parse_seconds("30m"), Some(1800));
        assert_eq!(parse_seconds("1h30m"), Some(5400));
        assert_eq!(parse_seconds("2D"), Some(172_800));
        for bad in ["", "m", "30x", "30m1h", "1h1h", "1.5h"] {
            assert_eq!(parse_seconds(bad), None, "{bad}");
        }
        assert_eq!(show_seconds(5400), "1h30m");
        assert_eq!(show_seconds(0), "0s");
    }

    #[test]
    fn slurm_times() {
        assert_eq!(parse_slurm_time("30"), Some(1800));
        assert_eq!(parse_slurm_time("59:58"), Some(3598));
        assert_eq!(parse_slurm_time("01:00:00"), Some(3600));
        assert_eq!(parse_slurm_time("1-02"), Some(93_600));
        assert_eq!(parse_slurm_time("1-02:03"), Some(93_780));
        assert_eq!(parse_slurm_time("2-00:00:05\n"), Some(172_805));
        for bad in [
            "",
            "UNLIMITED",
            "NOT_SET",
            "INVALID",
            "1:2:3:4",
            "-5",
            "1h",
            "1-",
            "a:b",
        ] {
            assert_eq!(parse_slurm_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn memory_amounts() {
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("4G"), Some(4 << 30));
        assert_eq!(parse_bytes("16GB"), Some(16 << 30));
        assert_eq!(parse_bytes("1.5k"), Some(1536));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("4 X"), None);
        assert_eq!(parse_bytes("G"), None);
        // 100000 TiB is about 2^57 bytes: fits; 2^64 and beyond do not.
        assert!(parse_bytes("100000T").is_some());
        assert_eq!(parse_bytes("99999999999999T"), None);
        assert_eq!(show_bytes(16 << 30), "16.0 GiB");
    }
}
