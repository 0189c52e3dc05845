//! `CONFIG GET` (what clients probe), `CONFIG RESETSTAT`; `CONFIG SET` is
//! refused (configuration is by flags).

use bytes::Bytes;

use super::lower;
use crate::resp::Reply;
use crate::server::commands;

/// What clients probe with CONFIG GET (redis-benchmark: save, appendonly).
const CONFIG: &[(&str, &str)] = &[
    ("appendfsync", "always"),
    ("appendonly", "no"),
    ("cluster-enabled", "yes"),
    ("databases", "1"),
    ("maxclients", "10000"),
    ("maxmemory", "0"),
    ("proto-max-bulk-len", "16777216"),
    ("save", ""),
    ("timeout", "0"),
];

pub fn config(args: &[Bytes]) -> Reply {
    match lower(&args[1]).as_str() {
        "get" if args.len() >= 3 => Reply::Map(
            CONFIG
                .iter()
                .filter(|(k, _)| args[2..].iter().any(|p| glob(p, k.as_bytes())))
                .map(|(k, v)| (Reply::bulk(*k), Reply::bulk(*v)))
                .collect(),
        ),
        "get" => commands::wrong_args("config|get"),
        "set" => Reply::error("ERR CONFIG SET is not supported by sharedisk: configure it with command-line flags"),
        "resetstat" => Reply::ok(),
        _ => Reply::error(format!("ERR unknown subcommand '{}'. Try CONFIG HELP.", String::from_utf8_lossy(&args[1]))),
    }
}

/// `*` and `?` globbing, enough for CONFIG GET patterns: the linear-time
/// two-pointer match (no backtracking blow-up on patterns full of stars).
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, i));
                p += 1;
            }
            Some(c) if *c == b'?' || c.eq_ignore_ascii_case(&s[i]) => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_globs() {
        assert!(glob(b"save", b"save"));
        assert!(glob(b"app*", b"appendonly"));
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"s?ve", b"save"));
        assert!(!glob(b"save", b"saves"));
        assert!(!glob(&[b'*'; 100].iter().chain(b"x").copied().collect::<Vec<_>>(), b"appendonlyappendonly"));
        let Reply::Map(m) = config(&[Bytes::from_static(b"CONFIG"), Bytes::from_static(b"GET"), Bytes::from_static(b"save")]) else {
            panic!()
        };
        assert_eq!(m, vec![(Reply::bulk("save"), Reply::bulk(""))]);
    }
}
