//! `PING`, `ECHO`, `SELECT`.

use bytes::Bytes;

use crate::resp::Reply;

pub fn ping(args: &[Bytes]) -> Reply {
    match args.get(1) {
        Some(m) => Reply::Bulk(m.clone()),
        None => Reply::Simple("PONG".into()),
    }
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
