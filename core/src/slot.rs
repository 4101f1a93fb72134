//! Redis Cluster hash slots, and the naming that keeps every key one lock
//! needs in one slot (see the crate docs' key layout).

/// How many hash slots a Redis Cluster has.
const SLOTS: u16 = 16384;

/// The Redis Cluster hash slot of `key`, as `CLUSTER KEYSLOT` computes it:
/// CRC16 of the key's hash tag (the text between its first `{` and the
/// first `}` after it, when that is not empty), or of the whole key.
///
/// Keys with the same hash tag share a slot, which is how keys meant to be
/// used together (a fence counter shared by several locks, a dead-letter
/// stream beside its stream) are kept on one node.
///
/// ```
/// use soloist::hash_slot;
/// assert_eq!(hash_slot("{user:7}:cart"), hash_slot("{user:7}:orders"));
/// assert_eq!(hash_slot("123456789"), 12739);
/// ```
pub fn hash_slot(key: &str) -> u16 {
    slot_of_bytes(key.as_bytes())
}

/// [`hash_slot`] of a key that need not be UTF-8.
pub(crate) fn slot_of_bytes(key: &[u8]) -> u16 {
    crc16(tag_bounds(key).map_or(key, |(start, end)| &key[start..end])) % SLOTS
}

/// Where `key`'s hash tag is: the bytes between its first `{` and the first
/// `}` after it, when there are any.
fn tag_bounds(key: &[u8]) -> Option<(usize, usize)> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > 0).then_some((open + 1, open + 1 + close))
}

/// The hash tag Redis hashes instead of the whole `key`, if it has one.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    // Braces are ASCII, so the bounds fall on character boundaries.
    tag_bounds(key.as_bytes()).map(|(start, end)| &key[start..end])
}

/// `key` as it appears inside soloist's Redis key names, so that every
/// name built from one key lands in one slot, and that slot is
/// [`hash_slot`]`(key)`:
/// - as it is, after a `=`, when it carries a hash tag (the tag decides);
/// - wrapped in braces when it has none (the key as a whole decides);
/// - as `{=key}` when it has no tag but a `}`, which would end the braces
///   early: such a key gets a slot of its own, not `hash_slot(key)`.
///
/// Different keys give different names: the first form starts with `=`,
/// the second holds no `}` inside its braces, the third does.
pub(crate) fn tagged(key: &str) -> String {
    let mut name = String::with_capacity(key.len() + 3);
    push_tagged(&mut name, key);
    name
}

/// Appends [`tagged`]`(key)` to `name`, for names built in one allocation.
pub(crate) fn push_tagged(name: &mut String, key: &str) {
    let (before, after) = tag_around(key);
    name.push_str(before);
    name.push_str(key);
    name.push_str(after);
}

/// What [`tagged`] puts before and after `key`.
pub(crate) fn tag_around(key: &str) -> (&'static str, &'static str) {
    // Most keys hold no brace at all: one pass tells, where the rules
    // below take two (every name of every lock call is built this way).
    if !key.contains('{') && !key.contains('}') {
        ("{", "}")
    } else if hash_tag(key).is_some() {
        ("=", "")
    } else if key.contains('}') {
        ("{=", "}")
    } else {
        ("{", "}")
    }
}

/// The slot of every name built from `key` with [`tagged`].
pub(crate) fn slot_of_tagged(key: &str) -> u16 {
    hash_slot(&tagged(key))
}

/// A name for something kept beside `base` (a dead-letter stream beside its
/// stream): `base` and the result share a hash slot. `None` when no name
/// can: `base` has no hash tag but a `}`, which would end a tag early.
///
/// ```
/// use soloist::{colocated, hash_slot};
/// let dead = colocated("orders", ":dead").unwrap();
/// assert_eq!(dead, "{orders}:dead");
/// assert_eq!(hash_slot(&dead), hash_slot("orders"));
/// assert_eq!(colocated("{shop}:orders", ":dead").unwrap(), "{shop}:orders:dead");
/// assert_eq!(colocated("odd}name", ":dead"), None);
/// ```
pub fn colocated(base: &str, suffix: &str) -> Option<String> {
    if hash_tag(base).is_some() {
        Some(format!("{base}{suffix}"))
    } else if base.contains('}') {
        None
    } else {
        Some(format!("{{{base}}}{suffix}"))
    }
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis
/// Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_rule() {
        assert_eq!(hash_tag("{user1000}.following"), Some("user1000"));
        assert_eq!(hash_tag("foo{}{bar}"), None);
        assert_eq!(hash_tag("foo{{bar}}zap"), Some("{bar"));
        assert_eq!(hash_tag("foo{bar}{zap}"), Some("bar"));
        assert_eq!(hash_tag("}{x}"), Some("x"));
        assert_eq!(hash_tag("plain"), None);
        assert_eq!(hash_tag("open{only"), None);
    }

    #[test]
    fn slots_match_known_values() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("bar"), 5061);
        assert_eq!(hash_slot("{foo}bar"), hash_slot("foo"));
        assert_eq!(hash_slot(""), 0);
    }

    #[test]
    fn every_name_of_a_key_shares_its_slot() {
        for key in [
            "orders:42",
            "{user:7}:cart",
            "a}b",
            "x{}y",
            "{",
            "}",
            "}{",
            "a{b}c}",
        ] {
            let slot = slot_of_tagged(key);
            for kind in ["soloist:lock:", "soloist:fence:", "billing:waiters:"] {
                assert_eq!(hash_slot(&format!("{kind}{}", tagged(key))), slot, "{key}");
            }
        }
    }

    #[test]
    fn tagged_names_differ_for_different_keys() {
        assert_eq!(tagged("orders:42"), "{orders:42}");
        assert_eq!(tagged("{"), "{{}");
        assert_eq!(tagged("a}b"), "{=a}b}");
        assert_eq!(tagged("{shop}:7"), "={shop}:7");
        let keys = ["x", "{x}", "=x", "{x}}", "x}", "=x}", "{{x}}", "}", "=}"];
        for a in keys {
            for b in keys {
                assert_eq!(tagged(a) == tagged(b), a == b, "{a} {b}");
            }
        }
        // A key's names live in the key's own slot, so that keys with one
        // hash tag (a lock and its shared fence counter) share a slot.
        for key in ["orders:42", "{report}:monday", "{report}", "a{b}c}"] {
            assert_eq!(slot_of_tagged(key), hash_slot(key), "{key}");
        }
    }
}
