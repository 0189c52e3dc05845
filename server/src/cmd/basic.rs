//! `PING`, `ECHO`, `SELECT`, `TIME`, `FUNCTION`.

use bytes::Bytes;

use crate::resp::Reply;

pub fn ping(args: &[Bytes]) -> Reply {
    match args {
        [_] => Reply::Simple("PONG".into()),
        [_, m] => Reply::Bulk(m.clone()),
        _ => crate::commands::wrong_args("ping"),
    }
}

/// `TIME`: unix seconds and the microseconds within, as two bulk strings.
pub fn time() -> Reply {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Reply::Array(vec![Reply::bulk(now.as_secs().to_string()), Reply::bulk(now.subsec_micros().to_string())])
}

pub fn echo(args: &[Bytes]) -> Reply {
    Reply::Bulk(args[1].clone())
}

/// Cluster mode has database 0 only.
pub fn select(args: &[Bytes]) -> Reply {
    match args[1].as_ref() {
        b"0" => Reply::ok(),
        _ => Reply::error("ERR SELECT is not allowed in cluster mode"),
    }
}

/// `FUNCTION`: this server runs no scripts, so there is never a library
/// to list or flush; FLUSH and LIST say so truthfully (Redis's test harness
/// and client libraries send them), the rest are refused by name.
pub fn function(args: &[Bytes]) -> Reply {
    let sub = super::lower(&args[1]);
    match (sub.as_str(), &args[2..]) {
        ("flush", []) => Reply::ok(),
        ("flush", [mode]) if mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync") => Reply::ok(),
        ("flush", _) => Reply::error("ERR syntax error"),
        ("list", _) => Reply::Array(vec![]),
        _ => Reply::error(format!("ERR FUNCTION {} is not supported: sharedisk has no scripting", sub.to_ascii_uppercase())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    #[test]
    fn function_flush_and_list_say_there_are_no_functions() {
        assert_eq!(function(&args(&["FUNCTION", "FLUSH"])), Reply::ok());
        assert_eq!(function(&args(&["function", "flush", "ASYNC"])), Reply::ok());
        assert_eq!(function(&args(&["function", "flush", "later"])), Reply::error("ERR syntax error"));
        assert_eq!(function(&args(&["function", "list"])), Reply::Array(vec![]));
        let Reply::Error(e) = function(&args(&["function", "load", "x"])) else { panic!() };
        assert!(e.contains("FUNCTION LOAD is not supported"), "{e}");
    }
}
