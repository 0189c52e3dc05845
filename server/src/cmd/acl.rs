//! `AUTH [user] password` and `ACL CAT|DELUSER|DRYRUN|GENPASS|GETUSER|LIST|
//! LOAD|SAVE|SETUSER|USERS|WHOAMI|HELP` (the users themselves: `acl.rs`).

use bytes::Bytes;

use super::{ClientState, lower};
use crate::ServerState;
use crate::acl::{CATEGORIES, DEFAULT_USER};
use crate::commands::{Command, SPECS, SUBCOMMANDS};
use crate::resp::Reply;

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Log in as `user` with `password`; Err is the reply (`HELLO … AUTH` too).
pub fn authenticate(client: &mut ClientState, shared: &ServerState, user: &[u8], password: &[u8]) -> Result<(), Reply> {
    // The epoch before the lookup: a change after it makes us look again.
    let epoch = shared.acl.epoch();
    match shared.acl.user(&String::from_utf8_lossy(user)) {
        Some(u) if u.accepts(password) => {
            client.log_in(u, epoch);
            Ok(())
        }
        _ => Err(Reply::error(WRONGPASS)),
    }
}

pub fn auth(client: &mut ClientState, shared: &ServerState, args: &[Bytes]) -> Reply {
    let result = match args.len() {
        2 if shared.acl.default_user().nopass() => {
            return Reply::error(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            );
        }
        2 => authenticate(client, shared, DEFAULT_USER.as_bytes(), &args[1]),
        3 => authenticate(client, shared, &args[1], &args[2]),
        _ => return Reply::error("ERR syntax error"),
    };
    result.map_or_else(|e| e, |()| Reply::ok())
}

fn bulk(s: impl Into<String>) -> Reply {
    Reply::Bulk(Bytes::from(s.into()))
}

pub fn acl(client: &mut ClientState, shared: &ServerState, args: &[Bytes]) -> Reply {
    let sub = lower(&args[1]);
    let wrong = || crate::commands::wrong_args(&format!("acl|{sub}"));
    match (sub.as_str(), args.len()) {
        ("whoami", 2) => bulk(client.user.name.clone()),
        ("users", 2) => Reply::Array(shared.acl.names().into_iter().map(bulk).collect()),
        ("list", 2) => Reply::Array(shared.acl.list().into_iter().map(bulk).collect()),
        ("cat", 2) => Reply::Array(CATEGORIES.iter().map(|c| bulk(*c)).collect()),
        ("cat", 3) => {
            let cat = lower(&args[2]);
            if !CATEGORIES.contains(&cat.as_str()) {
                return Reply::error(format!("ERR Unknown category '{cat}'"));
            }
            let tag = format!("@{cat}");
            let names = SPECS.iter().chain(SUBCOMMANDS).filter(|s| s.categories.contains(&tag.as_str())).map(|s| bulk(s.name));
            Reply::Array(names.collect())
        }
        ("setuser", n) if n >= 3 => match shared.acl.set_user(&args[2], &args[3..]) {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::error(e),
        },
        ("deluser", n) if n >= 3 => match shared.acl.del_users(&args[2..]) {
            Ok(n) => {
                // Their connections go, as in Redis.
                let names: Vec<String> = args[2..].iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                shared.controls.conns.kill_users(&names);
                Reply::Int(n as i64)
            }
            Err(e) => Reply::error(e),
        },
        ("getuser", 3) => match shared.acl.user(&String::from_utf8_lossy(&args[2])) {
            Some(u) => Reply::Map(u.fields().into_iter().map(|(k, v)| (bulk(k), v)).collect()),
            None => Reply::Null,
        },
        ("genpass", 2 | 3) => {
            let bits = match args.get(2).map(|b| crate::commands::parse_i64(b)) {
                None => 256,
                Some(Some(b @ 1..=4096)) => b as usize,
                Some(_) => {
                    return Reply::error(
                        "ERR ACL GENPASS argument must be the number of bits for the output password, a positive number up to 4096",
                    );
                }
            };
            let mut hex = String::new();
            while hex.len() * 4 < bits {
                match sharedisk_lockmgr::secret::random() {
                    Ok(b) => hex.push_str(&sharedisk_lockmgr::secret::hex(&b)),
                    Err(e) => return Reply::error(format!("ERR {e}")),
                }
            }
            hex.truncate(bits.div_ceil(4));
            bulk(hex)
        }
        ("dryrun", n) if n >= 4 => {
            let Some(user) = shared.acl.user(&String::from_utf8_lossy(&args[2])) else {
                return Reply::error(format!("ERR User '{}' not found", String::from_utf8_lossy(&args[2])));
            };
            let cmd = match Command::parse(args[3..].to_vec()) {
                Ok(c) => c,
                Err(Reply::Error(e)) if e.starts_with("ERR unknown command") => {
                    return Reply::error(format!("ERR Command '{}' not found", String::from_utf8_lossy(&args[3])));
                }
                Err(e) => return e,
            };
            match user.check(&cmd) {
                Ok(()) => Reply::ok(),
                Err(crate::acl::Denied::Command(name)) => bulk(format!("This user has no permissions to run the '{name}' command")),
                Err(crate::acl::Denied::Key) => bulk("This user has no permissions to access one of the keys used as arguments"),
            }
        }
        ("save", 2) => shared.acl.save().map_or_else(Reply::error, |()| Reply::ok()),
        ("load", 2) => shared.acl.load().map_or_else(Reply::error, |()| Reply::ok()),
        ("help", 2) => super::help(
            "ACL",
            &[
                "CAT [<category>]",
                "    List all commands that belong to <category>, or all command categories",
                "    when no category is specified.",
                "DELUSER <username> [<username> ...]",
                "    Delete a list of users.",
                "DRYRUN <username> <command> [<arg> ...]",
                "    Returns whether the user can execute the given command without executing the command.",
                "GETUSER <username>",
                "    Get the user's details.",
                "GENPASS [<bits>]",
                "    Generate a secure 256-bit user password. The optional `bits` argument can",
                "    be used to specify a different size.",
                "LIST",
                "    Show users details in config file format.",
                "LOAD",
                "    Reload users from the ACL file.",
                "SAVE",
                "    Save the current config to the ACL file.",
                "SETUSER <username> <attribute> [<attribute> ...]",
                "    Create or modify a user with the specified attributes.",
                "USERS",
                "    List all the registered usernames.",
                "WHOAMI",
                "    Return the current connection username.",
            ],
        ),
        ("whoami" | "users" | "list" | "cat" | "setuser" | "deluser" | "getuser" | "genpass" | "dryrun" | "save" | "load" | "help", _) => {
            wrong()
        }
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try ACL HELP.", String::from_utf8_lossy(&args[1]))),
    }
}
