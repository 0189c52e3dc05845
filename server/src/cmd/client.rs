//! `CLIENT SETNAME|GETNAME|SETINFO|ID|INFO`.

use bytes::Bytes;

use super::{ClientState, lower};
use crate::commands;
use crate::resp::Reply;

pub fn client(client: &mut ClientState, args: &[Bytes]) -> Reply {
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("setname", 3) => {
            if args[2].iter().any(|b| *b <= b' ' || *b > b'~') {
                return Reply::error("ERR Client names cannot contain spaces, newlines or special characters.");
            }
            client.name = (!args[2].is_empty()).then(|| args[2].clone());
            Reply::ok()
        }
        ("getname", 2) => client.name.clone().map_or(Reply::Null, Reply::Bulk),
        ("setinfo", 4) => match lower(&args[2]).as_str() {
            "lib-name" | "lib-ver" => Reply::ok(),
            _ => Reply::error(format!("ERR Unrecognized option '{}'", String::from_utf8_lossy(&args[2]))),
        },
        ("id", 2) => Reply::Int(client.id as i64),
        ("info", 2) => Reply::Verbatim(format!(
            "id={} name={} resp={}\n",
            client.id,
            client.name.as_ref().map_or(String::new(), |n| String::from_utf8_lossy(n).into_owned()),
            client.proto
        )),
        ("setname" | "getname" | "setinfo" | "id" | "info", _) => commands::wrong_args(&format!("client|{sub}")),
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try CLIENT HELP.", String::from_utf8_lossy(&args[1]))),
    }
}
