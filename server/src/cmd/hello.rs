//! `HELLO [protover [AUTH user pass] [SETNAME name]]`: the protocol switch
//! and the map redis-py checks for `proto`.

use bytes::Bytes;

use super::{ClientState, lower};
use crate::commands;
use crate::resp::Reply;

pub fn hello(client: &mut ClientState, args: &[Bytes]) -> Reply {
    let mut proto = client.proto;
    if let Some(v) = args.get(1) {
        match commands::parse_i64(v) {
            Some(2) => proto = 2,
            Some(3) => proto = 3,
            Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
            None => return Reply::error("ERR Protocol version is not an integer or out of range"),
        }
    }
    let mut i = 2;
    while i < args.len() {
        match (lower(&args[i]).as_str(), args.len() - i) {
            ("auth", n) if n >= 3 => i += 3, // no users or passwords: every client is the default user
            ("setname", n) if n >= 2 => {
                client.info.set_name(Some(args[i + 1].clone()));
                i += 2;
            }
            (other, _) => return Reply::error(format!("ERR Syntax error in HELLO option '{other}'")),
        }
    }
    client.proto = proto;
    client.info.resp.store(proto, std::sync::atomic::Ordering::Relaxed);
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk("7.0.15")),
        (Reply::bulk("proto"), Reply::Int(i64::from(proto))),
        (Reply::bulk("id"), Reply::Int(client.info.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("cluster")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(vec![])),
    ])
}
