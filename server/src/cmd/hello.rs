//! `HELLO [protover [AUTH user pass] [SETNAME name]]`: the protocol switch
//! (with a login, `cmd/acl.rs`) and the map redis-py checks for `proto`.

use bytes::Bytes;

use super::{ClientState, lower};
use crate::ServerState;
use crate::commands;
use crate::resp::Reply;

pub fn hello(client: &mut ClientState, shared: &ServerState, args: &[Bytes]) -> Reply {
    let mut proto = client.proto;
    if let Some(v) = args.get(1) {
        match commands::parse_i64(v) {
            Some(2) => proto = 2,
            Some(3) => proto = 3,
            Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
            None => return Reply::error("ERR Protocol version is not an integer or out of range"),
        }
    }
    // Options are checked before any takes effect: a failed AUTH changes
    // neither the protocol nor the name.
    let (mut i, mut auth, mut name) = (2, None, None);
    while i < args.len() {
        match (lower(&args[i]).as_str(), args.len() - i) {
            ("auth", n) if n >= 3 => {
                auth = Some((&args[i + 1], &args[i + 2]));
                i += 3;
            }
            ("setname", n) if n >= 2 => {
                name = Some(args[i + 1].clone());
                i += 2;
            }
            (other, _) => return Reply::error(format!("ERR Syntax error in HELLO option '{other}'")),
        }
    }
    match auth {
        Some((user, password)) => {
            if let Err(e) = super::acl::authenticate(client, shared, user, password) {
                return e;
            }
        }
        None if !client.authenticated => {
            return Reply::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH \
                 <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the \
                 same time",
            );
        }
        None => {}
    }
    if let Some(name) = name {
        client.info.set_name(Some(name));
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
