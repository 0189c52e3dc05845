//! What this process uses, from `/proc/self` (INFO memory and cpu, and the
//! `maxmemory` check).

/// Resident memory of this process in bytes (what Redis calls
/// `used_memory_rss`). Values live in the volume's page cache, not here: this
/// is the indexes, buffers and replies in flight. 0 if /proc is unreadable.
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|f| f.parse().ok()).unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

/// CPU time this process used, (user, system) in seconds.
pub fn cpu_seconds() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return (0.0, 0.0) };
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return (0.0, 0.0) };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0) as f64;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    (ticks(11) / hz, ticks(12) / hz)
}

/// `1234567` as Redis's `used_memory_human` writes it (`1.18M`).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes}B"),
        1024..1_048_576 => format!("{:.2}K", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.2}M", b / 1_048_576.0),
        _ => format!("{:.2}G", b / 1_073_741_824.0),
    }
}

/// A memory size as Redis's configuration takes it: bytes, or a number with
/// `k`/`m`/`g` (powers of 1000) or `kb`/`mb`/`gb` (powers of 1024), any case.
pub fn parse_memory(s: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(s).ok()?.to_ascii_lowercase();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let mul: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_as_redis_reads_them() {
        assert_eq!(parse_memory(b"0"), Some(0));
        assert_eq!(parse_memory(b"700mb"), Some(734_003_200));
        assert_eq!(parse_memory(b"1G"), Some(1_000_000_000));
        assert_eq!(parse_memory(b"10kb"), Some(10_240));
        for bad in [&b"bla"[..], b"", b"-1", b"1x", b"99999999999999999999gb"] {
            assert_eq!(parse_memory(bad), None, "{bad:?}");
        }
        assert!(rss_bytes() > 0);
        assert_eq!(human(1_258_291), "1.20M");
        let (user, system) = cpu_seconds();
        assert!(user >= 0.0 && system >= 0.0);
    }
}
