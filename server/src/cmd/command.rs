//! `COMMAND [COUNT|LIST|DOCS|INFO|GETKEYS|GETKEYSANDFLAGS|HELP]`: the command
//! table with key positions and flags (redis-py routes from it), its
//! subcommands (`config|get`) included where Redis lists them.

use bytes::Bytes;

use super::lower;
use crate::commands::{self, Command, SPECS, SUBCOMMANDS};
use crate::resp::Reply;

pub fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|a| lower(a)) else { return Reply::Array(SPECS.iter().map(commands::command_entry).collect()) };
    match sub.as_str() {
        "count" => Reply::Int(SPECS.len() as i64),
        "list" => list(&args[2..]),
        "docs" => Reply::Map(vec![]),
        "info" => Reply::Array(
            args[2..]
                .iter()
                .map(|n| commands::lookup(n).or_else(|| commands::lookup_sub(n)).map_or(Reply::Null, commands::command_entry))
                .collect(),
        ),
        "getkeys" | "getkeysandflags" if args.len() >= 3 => match Command::parse(args[2..].to_vec()) {
            Ok(cmd) if cmd.spec.first_key == 0 => Reply::error("ERR The command has no key arguments"),
            // A container's subcommand without its key (`MEMORY USAGE`).
            Ok(cmd) if cmd.keys().next().is_none() => Reply::error("ERR Invalid arguments specified for command"),
            Ok(cmd) if sub == "getkeys" => Reply::Array(cmd.keys().map(|k| Reply::Bulk(k.clone())).collect()),
            Ok(cmd) => Reply::Array(
                cmd.keys()
                    .enumerate()
                    .map(|(i, k)| {
                        let flags = commands::key_flags(cmd.spec, i, &cmd.args);
                        Reply::Array(vec![
                            Reply::Bulk(k.clone()),
                            Reply::Array(flags.iter().map(|f| Reply::Simple((*f).to_owned())).collect()),
                        ])
                    })
                    .collect(),
            ),
            Err(_) if commands::lookup(&args[2]).is_none() => Reply::error("ERR Invalid command specified"),
            Err(_) => Reply::error("ERR Invalid number of arguments specified for command"),
        },
        "getkeys" | "getkeysandflags" => commands::wrong_args(&format!("command|{sub}")),
        "help" => super::help(
            "COMMAND",
            &[
                "(no subcommand)",
                "    Return details about all Redis commands.",
                "COUNT",
                "    Return the total number of commands in this Redis server.",
                "LIST [FILTERBY (MODULE <module-name>|ACLCAT <category>|PATTERN <pattern>)]",
                "    Return a list of all commands in this Redis server.",
                "INFO [<command-name> ...]",
                "    Return details about multiple Redis commands.",
                "DOCS [<command-name> ...]",
                "    Return documentation details about multiple Redis commands (none: sharedisk ships no docs).",
                "GETKEYS <full-command>",
                "    Return the keys from a full Redis command.",
                "GETKEYSANDFLAGS <full-command>",
                "    Return the keys and the access flags from a full Redis command.",
            ],
        ),
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try COMMAND HELP.", String::from_utf8_lossy(&args[1]))),
    }
}

/// `COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN glob]`,
/// over the commands and their subcommands.
fn list(args: &[Bytes]) -> Reply {
    let names = |keep: &dyn Fn(&commands::Spec) -> bool| {
        Reply::Array(SPECS.iter().chain(SUBCOMMANDS).filter(|s| keep(s)).map(|s| Reply::bulk(s.name)).collect())
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Reply {
        command(&line.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect::<Vec<_>>())
    }

    fn strings(r: Reply) -> Vec<String> {
        let Reply::Array(v) = r else { panic!("{r:?}") };
        v.into_iter()
            .map(|e| match e {
                Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                Reply::Simple(s) => s,
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// The replies of Redis 7.0's own tests (unit/introspection-2) where we
    /// have the command.
    #[test]
    fn keys_and_flags_as_redis_reports_them() {
        let flags = |line: &str| {
            let Reply::Array(keys) = run(line) else { panic!() };
            keys.into_iter()
                .map(|k| {
                    let Reply::Array(mut kf) = k else { panic!() };
                    let flags = strings(kf.pop().unwrap()).join(" ");
                    let key = strings(Reply::Array(kf)).join("");
                    format!("{key}:{flags}")
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(flags("COMMAND GETKEYSANDFLAGS set k1 v1"), ["k1:OW update"]);
        assert_eq!(flags("COMMAND GETKEYSANDFLAGS set k1 v1 GET"), ["k1:RW access update"]);
        assert_eq!(flags("COMMAND GETKEYSANDFLAGS mset k1 v1 k2 v2"), ["k1:OW update", "k2:OW update"]);
        assert_eq!(flags("COMMAND GETKEYSANDFLAGS rename a b"), ["a:RW access delete", "b:OW update"]);
        assert_eq!(flags("COMMAND GETKEYSANDFLAGS bitop and d s1 s2"), ["d:OW update", "s1:RO access", "s2:RO access"]);
        assert_eq!(flags("COMMAND GETKEYSANDFLAGS del a b"), ["a:RM delete", "b:RM delete"]);
        assert_eq!(strings(run("COMMAND GETKEYS lcs key1 key2")), ["key1", "key2"]);
        assert_eq!(run("COMMAND GETKEYSANDFLAGS ping"), Reply::error("ERR The command has no key arguments"));
        assert_eq!(run("COMMAND GETKEYSANDFLAGS nosuch k"), Reply::error("ERR Invalid command specified"));
        assert_eq!(run("COMMAND GETKEYSANDFLAGS get"), Reply::error("ERR Invalid number of arguments specified for command"));
        assert_eq!(run("COMMAND GETKEYS memory usage"), Reply::error("ERR Invalid arguments specified for command"));
        assert_eq!(strings(run("COMMAND GETKEYS memory usage k")), ["k"]);
    }

    #[test]
    fn help_of_a_keyed_container_needs_no_partition() {
        let cmd = |line: &str| Command::parse(line.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()).unwrap();
        for c in ["OBJECT HELP", "MEMORY help"] {
            assert!(matches!(commands::keyless(&cmd(c)), Some(Reply::Array(l)) if l.len() > 3), "{c}");
        }
        assert_eq!(commands::keyless(&cmd("OBJECT ENCODING k")), None);
    }

    #[test]
    fn subcommands_are_listed_and_described_by_their_full_name() {
        let all = strings(run("COMMAND LIST"));
        assert!(all.contains(&"set".to_owned()) && all.contains(&"client|list".to_owned()));
        assert_eq!(strings(run("COMMAND LIST FILTERBY PATTERN set")), ["set"]);
        let config = strings(run("COMMAND LIST FILTERBY PATTERN config*"));
        assert!(["config", "config|get", "config|set", "config|rewrite"].iter().all(|c| config.contains(&(*c).to_owned())), "{config:?}");
        let re = strings(run("COMMAND LIST FILTERBY PATTERN config|*re*"));
        assert!(re.contains(&"config|resetstat".to_owned()) && re.contains(&"config|rewrite".to_owned()));
        let help = strings(run("COMMAND LIST FILTERBY PATTERN cl*help"));
        assert!(help.contains(&"client|help".to_owned()) && help.contains(&"cluster|help".to_owned()), "{help:?}");
        assert!(strings(run("COMMAND LIST FILTERBY PATTERN non_exists*")).is_empty());
        assert!(strings(run("COMMAND LIST FILTERBY ACLCAT non_existing_category")).is_empty());
        assert!(!strings(run("COMMAND LIST FILTERBY ACLCAT scripting")).contains(&"set".to_owned()));
        for bad in ["COMMAND LIST bad_arg", "COMMAND LIST filterby bad_arg", "COMMAND LIST filterby bad_arg bad_arg2"] {
            assert_eq!(run(bad), Reply::error("ERR syntax error"), "{bad}");
        }
        // An entry by its full name; no such subcommand is a null entry.
        let Reply::Array(info) = run("COMMAND INFO config|get get|key config|get|key") else { panic!() };
        assert!(matches!(&info[0], Reply::Array(e) if e[0] == Reply::bulk("config|get") && e[1] == Reply::Int(-3)));
        assert_eq!(info[1..], [Reply::Null, Reply::Null]);
        // A container's entry carries its subcommands' entries.
        let Reply::Array(info) = run("COMMAND INFO object") else { panic!() };
        let Reply::Array(entry) = &info[0] else { panic!() };
        let Reply::Array(subs) = &entry[9] else { panic!() };
        assert_eq!(subs.len(), commands::subcommands_of(commands::Id::Object).count());
        assert!(subs.len() >= 5);
        // Each subcommand under its container, by the container's name.
        for sub in SUBCOMMANDS {
            let parent = SPECS.iter().find(|s| s.id == sub.id).unwrap();
            assert!(sub.id.has_subcommands() && sub.name.starts_with(&format!("{}|", parent.name)), "{}", sub.name);
        }
    }
}
