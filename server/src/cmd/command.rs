//! `COMMAND [COUNT|LIST|DOCS|INFO|GETKEYS]`: the command table with key
//! positions (redis-py routes from it).

use bytes::Bytes;

use super::lower;
use crate::commands::{self, Command, SPECS};
use crate::resp::Reply;

pub fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|a| lower(a)) else { return Reply::Array(SPECS.iter().map(commands::command_entry).collect()) };
    match sub.as_str() {
        "count" => Reply::Int(SPECS.len() as i64),
        "list" => list(&args[2..]),
        "docs" => Reply::Map(vec![]),
        "info" => Reply::Array(args[2..].iter().map(|n| commands::lookup(n).map_or(Reply::Null, commands::command_entry)).collect()),
        "getkeys" if args.len() >= 3 => match Command::parse(args[2..].to_vec()) {
            Ok(cmd) if cmd.spec.first_key == 0 => Reply::error("ERR The command has no key arguments"),
            Ok(cmd) => Reply::Array(cmd.keys().map(|k| Reply::Bulk(k.clone())).collect()),
            Err(_) if commands::lookup(&args[2]).is_none() => Reply::error("ERR Invalid command specified"),
            Err(_) => Reply::error("ERR Invalid number of arguments specified for command"),
        },
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try COMMAND HELP.", String::from_utf8_lossy(&args[1]))),
    }
}

/// `COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN glob]`.
fn list(args: &[Bytes]) -> Reply {
    let names =
        |keep: &dyn Fn(&commands::Spec) -> bool| Reply::Array(SPECS.iter().filter(|s| keep(s)).map(|s| Reply::bulk(s.name)).collect());
    match args {
        [] => names(&|_| true),
        [filterby, kind, value] if lower(filterby) == "filterby" => match lower(kind).as_str() {
            // No modules are loaded.
            "module" => Reply::Array(vec![]),
            "aclcat" => {
                let cat = lower(value);
                names(&|s| s.categories.iter().any(|c| c.trim_start_matches('@') == cat))
            }
            "pattern" => names(&|s| crate::glob::matches_nocase(value, s.name.as_bytes())),
            _ => Reply::error("ERR syntax error"),
        },
        _ => Reply::error("ERR syntax error"),
    }
}
