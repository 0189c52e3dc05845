//! `PING`, `ECHO`, `SELECT`.

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
