//! Redis's glob patterns (`KEYS`, `CONFIG GET`, and later `SCAN MATCH`), byte for byte as
//! `stringmatchlen` in Redis's `util.c`: `*` any run of bytes, `?` any one
//! byte, `[abc]`, `[^abc]` and `[a-z]` (a reversed range counts too) one
//! byte of a class, `\x` the byte x itself, inside a class as well. An
//! unterminated class ends where the pattern does; `[]` matches nothing.
//!
//! One pass with one backtracking point (the last `*`), so a pattern of many
//! stars costs at most `pattern × key` steps, never an exponential search.
//! Redis bounds its recursive matcher's nesting instead: a pattern whose
//! match must pass more than [`STAR_GROUPS_MAX`] runs of stars matches
//! nothing there, and so here too, to answer as Redis does.

/// Whether `key` matches `pattern`, byte for byte (`KEYS`).
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    matches_as(pattern, key, false)
}

/// Whether `name` matches `pattern`, ASCII case ignored (`CONFIG GET`).
pub fn matches_nocase(pattern: &[u8], name: &[u8]) -> bool {
    matches_as(pattern, name, true)
}

/// Redis's `stringmatchlen` gives up (no match) below this many nested
/// stars (`if (nesting > 1000) return 0`).
pub const STAR_GROUPS_MAX: usize = 1000;

fn matches_as(pattern: &[u8], key: &[u8], nocase: bool) -> bool {
    let fold = |c: u8| if nocase { c.to_ascii_lowercase() } else { c };
    let (mut p, mut k) = (0, 0);
    // Runs of stars passed so far: Redis's recursion depth at this point.
    let mut groups = 0;
    // Where to resume after a mismatch: the pattern just past the last `*`,
    // the key position that star has swallowed up to, and the runs passed.
    let mut star: Option<(usize, usize, usize)> = None;
    while k < key.len() {
        if p < pattern.len() {
            if pattern[p] == b'*' {
                while p < pattern.len() && pattern[p] == b'*' {
                    p += 1;
                }
                if p == pattern.len() {
                    return true;
                }
                groups += 1;
                if groups > STAR_GROUPS_MAX {
                    return false;
                }
                star = Some((p, k, groups));
                continue;
            }
            if let Some(next) = one(pattern, p, key[k], fold) {
                p = next;
                k += 1;
                continue;
            }
        }
        match star {
            Some((after, swallowed, passed)) => {
                star = Some((after, swallowed + 1, passed));
                p = after;
                k = swallowed + 1;
                groups = passed;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// If the pattern element at `p` matches byte `c`, where the next element starts.
fn one(pattern: &[u8], p: usize, c: u8, fold: impl Fn(u8) -> u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (fold(pattern[p + 1]) == fold(c)).then_some(p + 2),
        b'[' => class(pattern, p + 1, c, fold),
        lit => (fold(lit) == fold(c)).then_some(p + 1),
    }
}

/// The class starting at `p` (just past `[`): whether it holds `c`, and if
/// so where the pattern goes on.
fn class(pattern: &[u8], mut p: usize, c: u8, fold: impl Fn(u8) -> u8) -> Option<usize> {
    let c = fold(c);
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut hit = false;
    loop {
        match pattern.get(p) {
            None => break,
            Some(b']') => {
                p += 1;
                break;
            }
            Some(b'\\') if p + 1 < pattern.len() => {
                hit |= fold(pattern[p + 1]) == c;
                p += 2;
            }
            Some(&lo) if pattern.get(p + 1) == Some(&b'-') && p + 2 < pattern.len() => {
                let (lo, hi) = (fold(lo), fold(pattern[p + 2]));
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                hit |= (lo..=hi).contains(&c);
                p += 3;
            }
            Some(&lit) => {
                hit |= fold(lit) == c;
                p += 1;
            }
        }
    }
    (hit != negate).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::{STAR_GROUPS_MAX, matches};

    #[test]
    fn patterns_match_as_in_redis() {
        let yes = [
            ("*", ""),
            ("*", "anything"),
            ("h?llo", "hello"),
            ("h?llo", "hallo"),
            ("h*llo", "hllo"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("user:*", "user:42"),
            ("*:*:*", "a:b:c"),
            ("a*b*c", "aXbYbZc"),
            ("\\*", "*"),
            ("[\\]]", "]"),
            ("x[abc", "xb"),
            ("**a**", "bab"),
            ("", ""),
        ];
        for (p, k) in yes {
            assert!(matches(p.as_bytes(), k.as_bytes()), "{p:?} should match {k:?}");
        }
        let no = [
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("h[a-b]llo", "hcllo"),
            ("user:*", "use"),
            ("a*b*c", "aXbYbZ"),
            ("\\*", "a"),
            ("[]", "a"),
            ("abc", "abcd"),
            ("", "a"),
            ("a?", "a"),
        ];
        for (p, k) in no {
            assert!(!matches(p.as_bytes(), k.as_bytes()), "{p:?} should not match {k:?}");
        }
    }

    #[test]
    fn nocase_folds_ascii_only_where_asked() {
        assert!(super::matches_nocase(b"APPEND*", b"appendonly"));
        assert!(super::matches_nocase(b"[A-C]ave", b"bave"));
        assert!(!matches(b"APPEND*", b"appendonly"));
    }

    #[test]
    fn many_stars_take_linear_steps_not_an_exponential_search() {
        // The pattern Redis's own test uses against a recursive matcher.
        let pattern = "a*".repeat(1000) + "b";
        let key = "a".repeat(5000);
        assert!(!matches(pattern.as_bytes(), key.as_bytes()));
    }

    #[test]
    fn past_a_thousand_nested_stars_nothing_matches_as_in_redis() {
        // Redis's "very long nested loops" regression: the key would match,
        // but the match passes 50,000 runs of stars.
        let key = "a".repeat(50_000);
        assert!(!matches("*?".repeat(50_000).as_bytes(), key.as_bytes()));
        // 1000 runs still match, the 1001st gives up; a trailing run is free.
        let key = "a".repeat(2000);
        assert!(matches(("*?".repeat(STAR_GROUPS_MAX) + "*").as_bytes(), key.as_bytes()));
        assert!(!matches("*?".repeat(STAR_GROUPS_MAX + 1).as_bytes(), key.as_bytes()));
        // Backtracking to the last star does not count its runs twice.
        assert!(matches(("*a".repeat(STAR_GROUPS_MAX - 1) + "*b").as_bytes(), ("a".repeat(1500) + "b").as_bytes()));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = sharedisk_testkit::Rng::new(7);
        let alphabet = b"ab*?[]^-\\";
        for _ in 0..20_000 {
            let p: Vec<u8> = (0..rng.below(12)).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            let k: Vec<u8> = (0..rng.below(12)).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            let _ = matches(&p, &k);
        }
    }
}
