//! Who may run what over RESP: users, passwords and permissions of Redis's
//! ACL shape (the common part), and the file they persist in.
//!
//! A user has a state (`on`/`off`), passwords (stored as SHA-256, as Redis
//! does; `nopass` accepts any), key patterns (`~p` for reads and writes,
//! `%R~p`, `%W~p`; `allkeys`), channel patterns (`&p`, `allchannels`,
//! `resetchannels`: what pub/sub may touch) and command rules applied in order (`+@read`,
//! `-@dangerous`, `+get`, `-config|set`, `allcommands`...). The rules
//! become one allow bit per command and subcommand of the spec tables, so a
//! check costs a lookup, and nothing at all for an unrestricted user (the
//! default one without a password: a server that has no ACL pays nothing).
//!
//! [`Acl`] holds the users; connections keep an `Arc` of theirs and look it
//! up again when the ACL's epoch moves (`ACL SETUSER`, `DELUSER`, `LOAD`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::commands::{self, Command, SPECS, SUBCOMMANDS, Spec};

/// Redis's ACL categories (`ACL CAT`): those of its command table, so that
/// rules written for Redis parse here too.
pub const CATEGORIES: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// The name of the user every connection starts as.
pub const DEFAULT_USER: &str = "default";

const READ: u8 = 1;
const WRITE: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyPattern {
    pattern: Bytes,
    /// READ and/or WRITE.
    perms: u8,
}

/// One user.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub enabled: bool,
    nopass: bool,
    /// SHA-256 of each password.
    passwords: Vec<[u8; 32]>,
    keys: Vec<KeyPattern>,
    channels: Vec<Bytes>,
    /// One bit per command of [`SPECS`], then per subcommand of [`SUBCOMMANDS`].
    allowed: Vec<bool>,
    /// The command rules since the last `+@all`/`-@all`, for `ACL LIST`.
    command_rules: Vec<String>,
    all_commands_base: bool,
    /// `unrestricted()`, kept up to date by `apply` (asked per command).
    open: bool,
}

/// Why a command is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    Command(String),
    Key,
}

impl Denied {
    /// Redis 7's reply.
    pub fn message(&self) -> String {
        match self {
            Denied::Command(name) => format!("NOPERM this user has no permissions to run the '{name}' command"),
            Denied::Key => "NOPERM this user has no permissions to access one of the keys used as arguments".to_owned(),
        }
    }
}

fn slots() -> usize {
    SPECS.len() + SUBCOMMANDS.len()
}

/// The position of a subcommand in [`SUBCOMMANDS`] (by its full name:
/// the table is a `const`, so addresses do not identify its rows).
fn sub_index(spec: &Spec) -> usize {
    SUBCOMMANDS.iter().position(|s| s.name == spec.name).expect("a subcommand of the table")
}

/// The allow-bit of a command as it was called: its subcommand's when it
/// names a known one, else the command's.
fn slot_of(cmd: &Command) -> (usize, &'static str) {
    if cmd.id().has_subcommands()
        && let Some(sub) = cmd.args.get(1)
    {
        let mut full = cmd.spec.name.as_bytes().to_vec();
        full.push(b'|');
        full.extend_from_slice(sub);
        if let Some(s) = commands::lookup_sub(&full) {
            return (SPECS.len() + sub_index(s), s.name);
        }
    }
    (commands::spec_index(cmd.spec), cmd.spec.name)
}

pub fn hash_password(password: &[u8]) -> [u8; 32] {
    Sha256::digest(password).into()
}

use sharedisk_lockmgr::secret::hex;

fn unhex_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(h)
}

/// Compare without an early exit (both are hashes: equal length).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl User {
    /// A new user as `ACL SETUSER` creates it: off, no password, no keys,
    /// no commands.
    pub fn new(name: &str) -> User {
        User {
            name: name.to_owned(),
            enabled: false,
            nopass: false,
            passwords: Vec::new(),
            keys: Vec::new(),
            channels: Vec::new(),
            allowed: vec![false; slots()],
            command_rules: Vec::new(),
            all_commands_base: false,
            open: false,
        }
    }

    /// The default user of a server without an ACL: on, any password, every key and command.
    pub fn open_default() -> User {
        let mut u = User::new(DEFAULT_USER);
        for r in ["on", "nopass", "~*", "&*", "+@all"] {
            u.apply(r.as_bytes()).expect("a valid rule");
        }
        u
    }

    /// Whether this user may run anything on any key (no check needed).
    #[inline]
    pub fn unrestricted(&self) -> bool {
        self.open
    }

    fn compute_open(&self) -> bool {
        self.all_commands_base
            && self.command_rules.is_empty()
            && self.keys.iter().any(|k| k.pattern.as_ref() == b"*" && k.perms == READ | WRITE)
    }

    /// Whether this user may publish or subscribe to `channel` (its
    /// `&pattern` rules; `allchannels` is `&*`). Checked for every user:
    /// commands and keys alone do not open the channels.
    pub fn may_use_channel(&self, channel: &[u8]) -> bool {
        self.channels.iter().any(|p| p.as_ref() == b"*" || crate::glob::matches(p, channel))
    }

    /// Whether this user may `PSUBSCRIBE` `pattern`: all channels, or that
    /// very pattern among its own (Redis's rule: a pattern subscription is
    /// not matched against patterns).
    pub fn may_use_pattern(&self, pattern: &[u8]) -> bool {
        self.channels.iter().any(|p| p.as_ref() == b"*" || p.as_ref() == pattern)
    }

    /// `nopass`: any password logs in.
    pub fn nopass(&self) -> bool {
        self.nopass
    }

    /// Whether a connection of this user needs no AUTH (Redis: nopass and on).
    pub fn needs_no_password(&self) -> bool {
        self.enabled && self.nopass
    }

    /// Whether `password` logs in as this user.
    pub fn accepts(&self, password: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        if self.nopass {
            return true;
        }
        let h = hash_password(password);
        // Every stored hash is compared, so the time says nothing of which matched.
        self.passwords.iter().fold(false, |ok, p| ok | same(p, &h))
    }

    fn set_all_commands(&mut self, on: bool) {
        self.allowed.iter_mut().for_each(|b| *b = on);
        self.command_rules.clear();
        self.all_commands_base = on;
    }

    /// Apply one rule (`ACL SETUSER`'s modifiers); Err is Redis's reason.
    pub fn apply(&mut self, rule: &[u8]) -> Result<(), String> {
        let r = self.apply_rule(rule);
        self.open = self.compute_open();
        r
    }

    fn apply_rule(&mut self, rule: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(rule).map_err(|_| "Syntax error".to_owned())?;
        let lower = text.to_ascii_lowercase();
        match lower.as_str() {
            "on" => self.enabled = true,
            "off" => self.enabled = false,
            "nopass" => {
                self.nopass = true;
                self.passwords.clear();
            }
            "resetpass" => {
                self.nopass = false;
                self.passwords.clear();
            }
            "allkeys" => self.keys = vec![KeyPattern { pattern: Bytes::from_static(b"*"), perms: READ | WRITE }],
            "resetkeys" => self.keys.clear(),
            "allchannels" => self.channels = vec![Bytes::from_static(b"*")],
            "resetchannels" => self.channels.clear(),
            "allcommands" => self.set_all_commands(true),
            "nocommands" => self.set_all_commands(false),
            "sanitize-payload" | "skip-sanitize-payload" => {}
            "reset" => {
                for r in ["resetpass", "resetkeys", "resetchannels", "off", "-@all"] {
                    self.apply(r.as_bytes())?;
                }
            }
            "clearselectors" => {}
            _ => return self.apply_prefixed(text, rule),
        }
        Ok(())
    }

    fn apply_prefixed(&mut self, text: &str, rule: &[u8]) -> Result<(), String> {
        match rule[0] {
            b'>' => {
                let h = hash_password(&rule[1..]);
                if !self.passwords.iter().any(|p| same(p, &h)) {
                    self.passwords.push(h);
                }
                self.nopass = false;
            }
            b'<' => {
                let h = hash_password(&rule[1..]);
                let before = self.passwords.len();
                self.passwords.retain(|p| !same(p, &h));
                if self.passwords.len() == before {
                    return Err("The password you are trying to remove from the user does not exist".into());
                }
            }
            b'#' | b'!' => {
                let h = unhex_hash(&text[1..])
                    .ok_or("The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters")?;
                if rule[0] == b'#' {
                    if !self.passwords.iter().any(|p| same(p, &h)) {
                        self.passwords.push(h);
                    }
                    self.nopass = false;
                } else {
                    let before = self.passwords.len();
                    self.passwords.retain(|p| !same(p, &h));
                    if self.passwords.len() == before {
                        return Err("The password you are trying to remove from the user does not exist".into());
                    }
                }
            }
            b'~' => self.add_keys(&rule[1..], READ | WRITE),
            b'%' => {
                let Some(tilde) = rule.iter().position(|&c| c == b'~') else { return Err("Syntax error".into()) };
                let mut perms = 0;
                for c in rule[1..tilde].iter() {
                    perms |= match c.to_ascii_uppercase() {
                        b'R' => READ,
                        b'W' => WRITE,
                        _ => return Err("Syntax error".into()),
                    };
                }
                if perms == 0 {
                    return Err("Syntax error".into());
                }
                self.add_keys(&rule[tilde + 1..], perms);
            }
            b'&' => {
                let p = Bytes::copy_from_slice(&rule[1..]);
                if !self.channels.contains(&p) {
                    self.channels.push(p);
                }
            }
            b'+' | b'-' => self.apply_command_rule(&text.to_ascii_lowercase())?,
            b'(' => return Err("Selectors are not supported by this server".into()),
            _ => return Err("Syntax error".into()),
        }
        Ok(())
    }

    fn add_keys(&mut self, pattern: &[u8], perms: u8) {
        if let Some(k) = self.keys.iter_mut().find(|k| k.pattern.as_ref() == pattern) {
            k.perms |= perms;
        } else {
            self.keys.push(KeyPattern { pattern: Bytes::copy_from_slice(pattern), perms });
        }
    }

    fn apply_command_rule(&mut self, rule: &str) -> Result<(), String> {
        const UNKNOWN: &str = "Unknown command or category name in ACL";
        let (allow, what) = (rule.starts_with('+'), &rule[1..]);
        if let Some(cat) = what.strip_prefix('@') {
            if cat == "all" {
                self.set_all_commands(allow);
                return Ok(());
            }
            if !CATEGORIES.contains(&cat) {
                return Err(UNKNOWN.into());
            }
            let tag = format!("@{cat}");
            for (i, s) in SPECS.iter().chain(SUBCOMMANDS).enumerate() {
                if s.categories.contains(&tag.as_str()) {
                    self.allowed[i] = allow;
                }
            }
        } else if let Some((container, _)) = what.split_once('|') {
            let spec = commands::lookup(container.as_bytes()).filter(|s| s.id.has_subcommands()).ok_or(UNKNOWN)?;
            let sub = commands::lookup_sub(what.as_bytes()).ok_or(UNKNOWN)?;
            debug_assert_eq!(sub.id, spec.id);
            self.allowed[SPECS.len() + sub_index(sub)] = allow;
        } else {
            let spec = commands::lookup(what.as_bytes()).ok_or(UNKNOWN)?;
            self.allowed[commands::spec_index(spec)] = allow;
            for (i, s) in SUBCOMMANDS.iter().enumerate() {
                if s.id == spec.id {
                    self.allowed[SPECS.len() + i] = allow;
                }
            }
        }
        self.command_rules.push(rule.to_owned());
        Ok(())
    }

    /// Whether this user may run `cmd` (its arity was checked).
    pub fn check(&self, cmd: &Command) -> Result<(), Denied> {
        // AUTH, HELLO and the like are for everyone (Redis's `no_auth`).
        if cmd.spec.flags.contains(&"no_auth") {
            return Ok(());
        }
        let (slot, name) = slot_of(cmd);
        if !self.allowed[slot] {
            return Err(Denied::Command(name.to_owned()));
        }
        if self.keys.iter().any(|k| k.pattern.as_ref() == b"*" && k.perms == READ | WRITE) {
            return Ok(());
        }
        for (i, key) in cmd.keys().enumerate() {
            let flags = commands::key_flags(cmd.spec, i, &cmd.args);
            let mut need = 0;
            if flags.contains(&"access") {
                need |= READ;
            }
            if flags.iter().any(|f| matches!(*f, "insert" | "delete" | "update")) {
                need |= WRITE;
            }
            if !self.keys.iter().any(|k| k.perms & need == need && crate::glob::matches(&k.pattern, key)) {
                return Err(Denied::Key);
            }
        }
        Ok(())
    }

    /// Its `ACL LIST` line (without the `user` word and name).
    pub fn describe(&self) -> String {
        let mut parts = vec![if self.enabled { "on" } else { "off" }.to_owned()];
        if self.nopass {
            parts.push("nopass".into());
        }
        parts.extend(self.passwords.iter().map(|p| format!("#{}", hex(p))));
        if self.keys.is_empty() {
            parts.push("resetkeys".into());
        }
        for k in &self.keys {
            let prefix = match k.perms {
                p if p == READ | WRITE => "~".to_owned(),
                READ => "%R~".to_owned(),
                _ => "%W~".to_owned(),
            };
            parts.push(format!("{prefix}{}", String::from_utf8_lossy(&k.pattern)));
        }
        if self.channels.is_empty() {
            parts.push("resetchannels".into());
        }
        parts.extend(self.channels.iter().map(|c| format!("&{}", String::from_utf8_lossy(c))));
        parts.push(if self.all_commands_base { "+@all" } else { "-@all" }.into());
        parts.extend(self.command_rules.iter().cloned());
        parts.join(" ")
    }

    /// `ACL GETUSER`'s fields (flags, passwords, commands, keys, channels).
    pub fn fields(&self) -> Vec<(String, crate::resp::Reply)> {
        use crate::resp::Reply;
        let mut flags = vec![if self.enabled { "on" } else { "off" }];
        if self.nopass {
            flags.push("nopass");
        }
        let d = self.describe();
        let commands: Vec<&str> = d.split(' ').filter(|p| p.starts_with('+') || p.starts_with('-')).collect();
        let keys: Vec<String> = d.split(' ').filter(|p| p.starts_with('~') || p.starts_with('%')).map(str::to_owned).collect();
        let channels: Vec<String> = d.split(' ').filter(|p| p.starts_with('&')).map(str::to_owned).collect();
        vec![
            ("flags".into(), Reply::Array(flags.into_iter().map(|f| Reply::Bulk(Bytes::from(f))).collect())),
            ("passwords".into(), Reply::Array(self.passwords.iter().map(|p| Reply::Bulk(Bytes::from(hex(p)))).collect())),
            ("commands".into(), Reply::Bulk(Bytes::from(commands.join(" ")))),
            ("keys".into(), Reply::Bulk(Bytes::from(keys.join(" ")))),
            ("channels".into(), Reply::Bulk(Bytes::from(channels.join(" ")))),
            ("selectors".into(), Reply::Array(Vec::new())),
        ]
    }
}

/// A user name as Redis allows it: no spaces, not empty.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && !name.iter().any(|c| c.is_ascii_whitespace()) && std::str::from_utf8(name).is_ok()
}

/// The users of this server.
#[derive(Debug)]
pub struct Acl {
    users: RwLock<BTreeMap<String, Arc<User>>>,
    epoch: AtomicU64,
    file: Option<PathBuf>,
    /// The default user as the flags made it (`--requirepass-file`): what
    /// an ACL file without a `default` line leaves in place, at start and
    /// at `ACL LOAD` alike (never the open one behind a password's back).
    configured_default: Arc<User>,
}

impl Default for Acl {
    fn default() -> Acl {
        Acl::new(BTreeMap::new(), None, Arc::new(User::open_default()))
    }
}

impl Acl {
    fn new(mut users: BTreeMap<String, Arc<User>>, file: Option<PathBuf>, configured_default: Arc<User>) -> Acl {
        users.entry(DEFAULT_USER.to_owned()).or_insert_with(|| configured_default.clone());
        Acl { users: RwLock::new(users), epoch: AtomicU64::new(0), file, configured_default }
    }

    /// From the flags: `requirepass` sets the default user's password;
    /// `file` (an ACL file, Redis's format) holds every user and is where
    /// `ACL SAVE` writes. Both may be given: the file's default user wins.
    pub fn configure(requirepass: Option<&[u8]>, file: Option<&Path>) -> Result<Acl, String> {
        let mut users = BTreeMap::new();
        let mut default = User::open_default();
        if let Some(p) = requirepass {
            default.apply(b"resetpass")?;
            let mut rule = b">".to_vec();
            rule.extend_from_slice(p);
            default.apply(&rule)?;
        }
        let default = Arc::new(default);
        users.insert(DEFAULT_USER.to_owned(), default.clone());
        if let Some(path) = file {
            match std::fs::read(path) {
                Ok(text) => {
                    for (name, user) in parse_file(&text).map_err(|e| format!("{}: {e}", path.display()))? {
                        users.insert(name, Arc::new(user));
                    }
                }
                // A new file: `ACL SAVE` creates it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot read the ACL file {}: {e}", path.display())),
            }
        }
        Ok(Acl::new(users, file.map(Path::to_owned), default))
    }

    /// Moves on every change (connections then look their user up again).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn default_user(&self) -> Arc<User> {
        self.user(DEFAULT_USER).unwrap_or_else(|| Arc::new(User::open_default()))
    }

    /// Whether a new connection must AUTH first.
    pub fn auth_required(&self) -> bool {
        !self.default_user().needs_no_password()
    }

    pub fn names(&self) -> Vec<String> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    pub fn list(&self) -> Vec<String> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).values().map(|u| format!("user {} {}", u.name, u.describe())).collect()
    }

    /// `ACL SETUSER name rules...`: all or nothing.
    pub fn set_user(&self, name: &[u8], rules: &[Bytes]) -> Result<(), String> {
        if !valid_name(name) {
            return Err("ERR Usernames can't contain spaces or null characters".into());
        }
        let name = String::from_utf8_lossy(name).into_owned();
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        let mut user = users.get(&name).map_or_else(|| User::new(&name), |u| (**u).clone());
        for r in rules {
            if r.is_empty() {
                return Err("ERR Error in ACL SETUSER modifier '': Syntax error".into());
            }
            user.apply(r).map_err(|e| format!("ERR Error in ACL SETUSER modifier '{}': {e}", String::from_utf8_lossy(r)))?;
        }
        users.insert(name, Arc::new(user));
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// `ACL DELUSER`: how many existed. The default user cannot go.
    pub fn del_users(&self, names: &[Bytes]) -> Result<usize, String> {
        if names.iter().any(|n| n.as_ref() == DEFAULT_USER.as_bytes()) {
            return Err("ERR The 'default' user cannot be removed".into());
        }
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        let n = names.iter().filter(|n| users.remove(String::from_utf8_lossy(n).as_ref()).is_some()).count();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(n)
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// `ACL SAVE`: every user to the file, atomically (a new file synced,
    /// then renamed over the old one, then the directory synced).
    pub fn save(&self) -> Result<(), String> {
        use std::io::Write;
        let Some(path) = &self.file else {
            return Err("ERR This Redis instance is not configured to use an ACL file. You may want to specify users via the ACL SETUSER command and then issue a CONFIG REWRITE (assuming you have a Redis configuration file set) in order to store users in the Redis configuration.".into());
        };
        let text: String = self.list().into_iter().map(|l| l + "\n").collect();
        // A name of its own: servers sharing one file may save at once.
        let nonce = sharedisk_lockmgr::secret::random().map_or(0, |b| u64::from_le_bytes(b[..8].try_into().expect("8 bytes")));
        let tmp = path.with_extension(format!("tmp.{}.{nonce:016x}", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write()
            .map_err(|e| format!("ERR There was an error trying to save the ACLs. Please check the server logs for more information ({e})"))
    }

    /// `ACL LOAD`: the file replaces every user, or nothing changes.
    pub fn load(&self) -> Result<(), String> {
        let Some(path) = &self.file else {
            return Err("ERR This Redis instance is not configured to use an ACL file. You may want to specify users via the ACL SETUSER command and then issue a CONFIG REWRITE (assuming you have a Redis configuration file set) in order to store users in the Redis configuration.".into());
        };
        let text = std::fs::read(path).map_err(|e| format!("ERR Error loading ACLs, cannot read {}: {e}", path.display()))?;
        let parsed = parse_file(&text).map_err(|e| format!("ERR Error loading ACLs: {e}"))?;
        let mut fresh: BTreeMap<String, Arc<User>> = parsed.into_iter().map(|(n, u)| (n, Arc::new(u))).collect();
        fresh.entry(DEFAULT_USER.to_owned()).or_insert_with(|| self.configured_default.clone());
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// An ACL file: `user <name> <rules...>` per line; blank lines and lines
/// starting with `#` are skipped. Err names the line.
fn parse_file(text: &[u8]) -> Result<Vec<(String, User)>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the file is not UTF-8".to_owned())?;
    let mut out: Vec<(String, User)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some("user"), Some(name)) = (words.next(), words.next()) else {
            return Err(format!("line {}: should start with user keyword followed by the username", n + 1));
        };
        if out.iter().any(|(u, _)| u == name) {
            return Err(format!("line {}: duplicate user '{name}'", n + 1));
        }
        let mut user = User::new(name);
        for w in words {
            user.apply(w.as_bytes()).map_err(|e| format!("line {}: error in user declaration '{w}': {e}", n + 1))?;
        }
        out.push((name.to_owned(), user));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Command {
        Command::parse(words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()).unwrap()
    }

    fn user(rules: &[&str]) -> User {
        let mut u = User::new("u");
        for r in rules {
            u.apply(r.as_bytes()).unwrap();
        }
        u
    }

    #[test]
    fn the_open_default_user_is_unrestricted_and_needs_no_password() {
        let d = User::open_default();
        assert!(d.unrestricted() && d.needs_no_password() && d.accepts(b"anything"));
        assert_eq!(d.describe(), "on nopass ~* &* +@all");
        assert!(d.check(&cmd(&["config", "set", "maxmemory", "1"])).is_ok());
    }

    #[test]
    fn passwords_are_stored_hashed_and_checked() {
        let mut u = user(&["on", ">secret", ">other"]);
        assert!(u.accepts(b"secret") && u.accepts(b"other") && !u.accepts(b"nope") && !u.accepts(b""));
        assert!(!u.describe().contains("secret"), "{}", u.describe());
        assert!(u.describe().contains(&format!("#{}", hex(&hash_password(b"secret")))));
        u.apply(b"<secret").unwrap();
        assert!(!u.accepts(b"secret") && u.accepts(b"other"));
        assert!(u.apply(b"<secret").is_err(), "removing a password it does not have");
        u.apply(b"off").unwrap();
        assert!(!u.accepts(b"other"), "an off user logs in with nothing");
        let h = hex(&hash_password(b"x"));
        let mut v = user(&["on", &format!("#{h}")]);
        assert!(v.accepts(b"x"));
        assert!(v.apply(b"#ABC").is_err() && v.apply(format!("#{}", h.to_uppercase()).as_bytes()).is_err());
    }

    #[test]
    fn categories_commands_and_subcommands_are_allowed_and_denied_in_order() {
        let u = user(&["on", "nopass", "~*", "+@read", "-mget", "+config|get", "+set"]);
        assert!(u.check(&cmd(&["get", "k"])).is_ok());
        assert_eq!(u.check(&cmd(&["mget", "a", "b"])), Err(Denied::Command("mget".into())));
        assert!(u.check(&cmd(&["set", "k", "v"])).is_ok());
        assert_eq!(u.check(&cmd(&["del", "k"])), Err(Denied::Command("del".into())));
        assert!(u.check(&cmd(&["config", "get", "maxmemory"])).is_ok());
        assert_eq!(u.check(&cmd(&["config", "set", "maxmemory", "1"])), Err(Denied::Command("config|set".into())));
        // AUTH and HELLO are for everyone.
        assert!(u.check(&cmd(&["auth", "x"])).is_ok() && u.check(&cmd(&["hello", "3"])).is_ok());
        assert_eq!(u.describe(), "on nopass ~* resetchannels -@all +@read -mget +config|get +set");
        let all_but = user(&["on", "nopass", "allkeys", "allcommands", "-@dangerous", "-config"]);
        assert!(all_but.check(&cmd(&["set", "k", "v"])).is_ok());
        assert!(all_but.check(&cmd(&["flushall"])).is_err());
        assert!(all_but.check(&cmd(&["config", "get", "x"])).is_err(), "-config takes its subcommands too");
        assert!(!all_but.unrestricted());
        for bad in ["+nosuch", "+@nosuch", "+config|nosuch", "+get|x", "foo", "(~* +get)", "%X~a"] {
            assert!(User::new("x").apply(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_patterns_check_reads_and_writes_separately() {
        let u = user(&["on", "nopass", "+@all", "~app:*", "%R~ro:*", "%W~wo:*"]);
        assert!(u.check(&cmd(&["set", "app:1", "v"])).is_ok());
        assert_eq!(u.check(&cmd(&["set", "other", "v"])), Err(Denied::Key));
        assert!(u.check(&cmd(&["get", "ro:1"])).is_ok());
        assert_eq!(u.check(&cmd(&["set", "ro:1", "v"])), Err(Denied::Key));
        assert!(u.check(&cmd(&["set", "wo:1", "v"])).is_ok());
        assert_eq!(u.check(&cmd(&["get", "wo:1"])), Err(Denied::Key));
        assert_eq!(u.check(&cmd(&["incr", "wo:1"])), Err(Denied::Key), "incr reads and writes");
        // A key the command neither reads nor writes (EXISTS) needs any pattern.
        assert!(u.check(&cmd(&["exists", "wo:1"])).is_ok());
        assert_eq!(u.check(&cmd(&["mget", "app:1", "nope"])), Err(Denied::Key), "every key counts");
        assert!(u.check(&cmd(&["copy", "ro:1", "app:2"])).is_ok());
        assert_eq!(u.check(&cmd(&["copy", "wo:1", "app:2"])), Err(Denied::Key));
        let none = user(&["on", "nopass", "+@all"]);
        assert_eq!(none.check(&cmd(&["get", "k"])), Err(Denied::Key));
        assert!(none.check(&cmd(&["ping"])).is_ok(), "no keys, no key check");
    }

    #[test]
    fn set_user_is_all_or_nothing_and_files_round_trip() {
        let acl = Acl::configure(Some(b"pw"), None).unwrap();
        assert!(acl.auth_required());
        assert!(acl.default_user().accepts(b"pw"));
        let e0 = acl.epoch();
        let err = acl.set_user(b"bob", &[Bytes::from_static(b"on"), Bytes::from_static(b"+nosuch")]).unwrap_err();
        assert_eq!(err, "ERR Error in ACL SETUSER modifier '+nosuch': Unknown command or category name in ACL");
        assert!(acl.user("bob").is_none() && acl.epoch() == e0, "a failed SETUSER changes nothing");
        acl.set_user(b"bob", &["on", ">b", "~b:*", "+@read"].map(|s| Bytes::from_static(s.as_bytes()))).unwrap();
        assert!(acl.epoch() > e0);
        assert!(acl.set_user(b"has space", &[]).is_err());
        assert!(acl.del_users(&[Bytes::from_static(b"default")]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.acl");
        let with_file = Acl::configure(None, Some(&path)).unwrap();
        assert!(!with_file.auth_required(), "a missing file: the open default user");
        with_file.set_user(b"bob", &["on", ">b", "~b:*", "+@read"].map(|s| Bytes::from_static(s.as_bytes()))).unwrap();
        with_file.set_user(b"default", &["resetpass", ">d"].map(|s| Bytes::from_static(s.as_bytes()))).unwrap();
        with_file.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(">b") && !text.contains(" b "), "passwords are saved hashed: {text}");
        let again = Acl::configure(None, Some(&path)).unwrap();
        assert_eq!(again.list(), with_file.list());
        assert!(again.auth_required() && again.user("bob").unwrap().accepts(b"b"));

        // A broken file is refused whole, naming the line; LOAD keeps what was.
        std::fs::write(&path, "user bob on >x\nuser eve on +nosuch\n").unwrap();
        let e = Acl::configure(None, Some(&path)).unwrap_err();
        assert!(e.contains("line 2") && e.contains("+nosuch"), "{e}");
        assert!(again.load().is_err());
        assert!(again.user("bob").unwrap().accepts(b"b"), "a failed LOAD changes nothing");
        std::fs::write(&path, "# comment\n\nuser carol on nopass ~* +@all\n").unwrap();
        again.load().unwrap();
        assert!(again.user("bob").is_none() && again.user("carol").is_some());
        assert!(!again.auth_required(), "the file has no default user: the open one");
        for bad in ["user\n", "users bob on\n", "user bob on\nuser bob off\n", "user bob on nopass >x (sel)\n"] {
            assert!(parse_file(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(Acl::default().save().is_err(), "no file to save to");

        // With --requirepass-file, a file without a default user leaves the
        // password in place, at start and at LOAD: never the open user.
        std::fs::write(&path, "user bob on >b ~* +@all\n").unwrap();
        let guarded = Acl::configure(Some(b"pw"), Some(&path)).unwrap();
        assert!(guarded.auth_required());
        guarded.set_user(b"default", &[Bytes::from_static(b"nopass")]).unwrap();
        guarded.load().unwrap();
        assert!(guarded.auth_required() && guarded.default_user().accepts(b"pw") && !guarded.default_user().accepts(b"x"));
        // Saves by several servers sharing the file do not collide.
        let shared = std::sync::Arc::new(guarded);
        let saves: Vec<_> = (0..4)
            .map(|_| {
                let a = shared.clone();
                std::thread::spawn(move || a.save())
            })
            .collect();
        for s in saves {
            s.join().unwrap().unwrap();
        }
        assert_eq!(Acl::configure(Some(b"pw"), Some(&path)).unwrap().list(), shared.list());
        let leftovers =
            std::fs::read_dir(dir.path()).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("tmp")).count();
        assert_eq!(leftovers, 0, "temporary files left behind");
    }
}
