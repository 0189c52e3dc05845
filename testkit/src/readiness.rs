//! The lines `sharedisk lockmgr` and `sharedisk server` print once they
//! serve, and the addresses in them. The processes print them (the format is
//! part of their interface: `up`, tests and benchmarks wait for them); this
//! is the one place that reads them.

/// `lockmgr: serving 16 partitions on 127.0.0.1:7000 (lease 600ms)`
pub const LOCKMGR_SERVING: &str = "lockmgr: serving ";
/// `lockmgr: standing by on 127.0.0.1:7002 (seat 1)`: every lock manager
/// prints it first; the active one then prints [`LOCKMGR_SERVING`].
pub const LOCKMGR_STANDING_BY: &str = "lockmgr: standing by on ";
/// `server s1: serving RESP on 127.0.0.1:7001 (node id …)`
pub const SERVER_SERVING: &str = "serving RESP on ";

/// The text of a log line: the line itself, or a JSON line's `message`
/// (`--log-format json`).
pub fn message(line: &str) -> std::borrow::Cow<'_, str> {
    if line.starts_with('{')
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
        && let Some(m) = v["message"].as_str()
    {
        return std::borrow::Cow::Owned(m.to_owned());
    }
    std::borrow::Cow::Borrowed(line)
}

/// The lock manager's address, if `line` is its readiness line.
pub fn lockmgr_addr(line: &str) -> Option<String> {
    let line = message(line);
    let rest = line.strip_prefix(LOCKMGR_SERVING)?;
    Some(rest.split(" on ").nth(1)?.split_whitespace().next()?.to_owned())
}

/// A lock manager's address, if `line` is its standing-by line.
pub fn lockmgr_standby_addr(line: &str) -> Option<String> {
    let line = message(line);
    Some(line.strip_prefix(LOCKMGR_STANDING_BY)?.split_whitespace().next()?.to_owned())
}

/// A server's RESP address, if `line` is its readiness line.
pub fn server_addr(line: &str) -> Option<String> {
    let line = message(line);
    Some(line.split(SERVER_SERVING).nth(1)?.split_whitespace().next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_readiness_lines_only() {
        assert_eq!(lockmgr_addr("lockmgr: serving 16 partitions on 127.0.0.1:7000 (lease 600ms)").as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(server_addr("server s1: serving RESP on 127.0.0.1:7001 (node id ab)").as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(lockmgr_addr("server s1: serving RESP on 127.0.0.1:7001"), None);
        assert_eq!(server_addr("lockmgr: serving 16 partitions on 127.0.0.1:7000"), None);
        assert_eq!(server_addr("serving RESP on "), None);
        assert_eq!(lockmgr_standby_addr("lockmgr: standing by on 127.0.0.1:7002 (seat 1)").as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(lockmgr_addr("lockmgr: standing by on 127.0.0.1:7002 (seat 1)"), None);
        // The same lines logged as JSON.
        let json = r#"{"timestamp":"t","level":"INFO","message":"lockmgr: serving 4 partitions on 127.0.0.1:7000 (term 1)","addr":"127.0.0.1:7000"}"#;
        assert_eq!(lockmgr_addr(json).as_deref(), Some("127.0.0.1:7000"));
        let json = r#"{"level":"INFO","message":"server s1: serving RESP on 127.0.0.1:7001 (node id ab)","server":"s1"}"#;
        assert_eq!(server_addr(json).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(server_addr(r#"{"message":"server s1: stopped"}"#), None);
    }
}
