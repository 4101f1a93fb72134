//! Owner tokens: what proves, inside the backend, which acquisition holds a key.
//!
//! A token reads `<owner id>.<acquired at>.<secret>`: the owner id names
//! this process (64 random bits, fixed for the life of the process), the
//! acquisition time is the local wall clock in Unix milliseconds (48 bits)
//! and the secret is 128 random bits. Each part is a number written in base
//! 64 with the base64url digits (`A`–`Z`, `a`–`z`, `0`–`9`, `-`, `_`), most
//! significant digit first and zero-padded (with `A`) to a fixed width: 11,
//! 8 and 22 digits, 43 bytes in all. Redis keeps a string value of up to 44
//! bytes that `SET` writes in one allocation with its object header, a
//! longer one in two: a token fits, with room for the `+` that marks a lock
//! with waiters.
//!
//! The scripts compare tokens whole; only the secret makes a token
//! unforgeable. The first two parts let an operator read who holds a key and
//! since when, without a round trip more at acquisition: a worker announces
//! its owner id in the fleet registry. [`parse_token`] reads them, and shows
//! the owner id as [`owner_id`] writes it (16 hex digits).
//!
//! Earlier versions of soloist wrote the three parts in hex (16, 12 and 32
//! digits, 62 bytes). [`parse_token`] reads those as well, so during a
//! rolling deploy the holders of both kinds show; an older soloist reads
//! only the hex kind and shows the others' holders without an owner.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The base64url digits, by value.
const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// Digits of each part: 64, 48 and 128 bits rounded up to whole digits.
const OWNER_DIGITS: usize = 11;
const TIME_DIGITS: usize = 8;
const SECRET_DIGITS: usize = 22;
/// A token's length: the three parts and two dots.
const TOKEN_LEN: usize = OWNER_DIGITS + 1 + TIME_DIGITS + 1 + SECRET_DIGITS;
/// The largest acquisition time a token can carry (year 10889).
const MAX_MILLIS: u128 = (1 << 48) - 1;

/// This process's owner id, drawn once: 64 random bits, as hex for people
/// and the fleet registry and as base64url digits for tokens.
struct Owner {
    hex: String,
    digits: String,
}

fn owner() -> &'static Owner {
    static OWNER: OnceLock<Owner> = OnceLock::new();
    OWNER.get_or_init(|| {
        let id = rand::random::<u64>();
        let mut digits = String::with_capacity(OWNER_DIGITS);
        push_digits(&mut digits, id.into(), OWNER_DIGITS);
        Owner {
            hex: format!("{id:016x}"),
            digits,
        }
    })
}

/// This process's owner id, which every token it issues carries: 16 hex
/// digits (64 random bits), fixed for the life of the process. The fleet
/// registry announces it, and [`parse_token`] returns it in the same form.
///
/// ```
/// let id = soloist::owner_id();
/// assert_eq!(id.len(), 16);
/// assert_eq!(id, soloist::owner_id());
/// ```
pub fn owner_id() -> &'static str {
    &owner().hex
}

/// A fresh owner token: this process's [`owner_id`], the local time and
/// 128 bits from the thread-local CSPRNG (ChaCha, seeded from the operating
/// system). Nothing about one token predicts another's secret, so no client
/// can forge a release or an extension.
///
/// Written digit by digit into one allocation of its exact size: every
/// acquisition attempt makes one, and `format!` with padded fields cost
/// several reallocations and most of a lock cycle's formatting time.
pub(crate) fn new_token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .min(MAX_MILLIS);
    let mut token = String::with_capacity(TOKEN_LEN);
    token.push_str(&owner().digits);
    token.push('.');
    push_digits(&mut token, now, TIME_DIGITS);
    token.push('.');
    push_digits(&mut token, rand::random::<u128>(), SECRET_DIGITS);
    token
}

/// Appends the low `6 * width` bits of `value` as `width` base64url digits,
/// most significant first.
fn push_digits(out: &mut String, value: u128, width: usize) {
    for at in (0..width).rev() {
        let shift = 6 * at;
        let digit = if shift < 128 {
            (value >> shift) & 63
        } else {
            0
        };
        out.push(char::from(DIGITS[digit as usize]));
    }
}

/// Reads `part` as a number of at most `bits` bits written in exactly as
/// many base64url digits as [`push_digits`] writes for it; `None` for any
/// other digit, length, or a value above `bits` bits.
fn read_digits(part: &[u8], bits: u32) -> Option<u128> {
    let width = bits.div_ceil(6) as usize;
    let (&first, rest) = part.split_first()?;
    if part.len() != width || bits > 128 {
        return None;
    }
    // The first digit holds what is left of `bits` after the others: the
    // spare high bits of a fixed width must be zero.
    let first = digit_value(first)?;
    if u32::from(first) >> (bits - 6 * (width as u32 - 1)) != 0 {
        return None;
    }
    rest.iter().try_fold(u128::from(first), |value, &digit| {
        Some((value << 6) | u128::from(digit_value(digit)?))
    })
}

fn digit_value(digit: u8) -> Option<u8> {
    match digit {
        b'A'..=b'Z' => Some(digit - b'A'),
        b'a'..=b'z' => Some(digit - b'a' + 26),
        b'0'..=b'9' => Some(digit - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Reads `part` as 1 to `max` hex digits (either case, no sign).
fn read_hex(part: &[u8], max: usize) -> Option<u64> {
    if part.is_empty() || part.len() > max.min(16) {
        return None;
    }
    part.iter().try_fold(0u64, |value, &digit| {
        Some((value << 4) | u64::from(char::from(digit).to_digit(16)?))
    })
}

/// What a lock's stored value says about its holder; see [`parse_token`].
///
/// ```
/// let info = soloist::parse_token("AAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq83v").unwrap();
/// assert_eq!(info.owner, "00000000000000ff");
/// assert_eq!(info.acquired_at, std::time::UNIX_EPOCH + std::time::Duration::from_millis(0x018c5a1b2c3d));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The owner id of the process that holds the lock ([`owner_id`] there):
    /// 16 lowercase hex digits, whichever format the token has.
    pub owner: String,
    /// When the holder's acquisition was sent, by its local clock.
    pub acquired_at: SystemTime,
}

/// Reads the owner and acquisition time out of a lock's stored value (the
/// value of its `lock:` key, with or without the `+` that marks waiters).
///
/// Reads the tokens soloist issues (43 bytes, base64url digits) and those of
/// earlier versions (62 bytes, hex digits), and gives the owner as
/// [`owner_id`] writes it for both. `None` for a value of any other shape;
/// it never panics, whatever the value.
///
/// ```
/// use soloist::parse_token;
/// let info = parse_token("AAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq83v+").unwrap();
/// assert_eq!(info.owner, "00000000000000ff");
/// // The hex format of earlier versions reads the same.
/// let old = parse_token("00000000000000ff.018c5a1b2c3d.0123456789abcdef0123456789abcdef").unwrap();
/// assert_eq!(old, info);
/// assert!(parse_token("0123456789abcdef0123456789abcdef").is_none());
/// ```
pub fn parse_token(value: &str) -> Option<TokenInfo> {
    let value = value.strip_suffix('+').unwrap_or(value).as_bytes();
    let mut parts = value.split(|&b| b == b'.');
    let (owner, at, secret) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (owner, millis) = if value.len() == TOKEN_LEN {
        read_digits(secret, 128)?;
        (read_digits(owner, 64)?, read_digits(at, 48)?)
    } else if owner.len() == 16 && secret.len() == 32 {
        // The hex format: 16 digits of owner, the time (12 digits as
        // written, fewer accepted), 32 of secret.
        read_hex(&secret[..16], 16)?;
        read_hex(&secret[16..], 16)?;
        (read_hex(owner, 16)?.into(), read_hex(at, 16)?.into())
    } else {
        return None;
    };
    let owner = u64::try_from(owner).ok()?;
    let millis = u64::try_from(millis).ok()?;
    Some(TokenInfo {
        owner: format!("{owner:016x}"),
        acquired_at: UNIX_EPOCH.checked_add(Duration::from_millis(millis))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(token: &str) -> u128 {
        let secret = token.rsplit('.').next().expect("secret");
        read_digits(secret.as_bytes(), 128).expect("22 base64url digits")
    }

    #[test]
    fn tokens_carry_owner_and_time() {
        let before = SystemTime::now() - Duration::from_millis(1);
        let token = new_token();
        assert_eq!(token.len(), 43, "{token}");
        assert_eq!(token.capacity(), token.len(), "{token}");
        let info = parse_token(&token).expect("parses");
        assert_eq!(info.owner, owner_id());
        assert!(info.acquired_at >= before && info.acquired_at <= SystemTime::now());
        assert_eq!(parse_token(&format!("{token}+")), Some(info));
    }

    #[test]
    fn owner_id_is_hex_of_the_tokens_owner() {
        assert_eq!(owner_id().len(), 16);
        assert!(
            owner_id()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let digits = new_token()[..OWNER_DIGITS].to_owned();
        let bits = read_digits(digits.as_bytes(), 64).expect("owner digits");
        assert_eq!(format!("{bits:016x}"), owner_id());
    }

    #[test]
    fn parts_round_trip_through_their_digits() {
        let mut values: Vec<(u128, u32)> = Vec::new();
        for bits in [48, 64, 128] {
            let max = if bits == 128 {
                u128::MAX
            } else {
                (1 << bits) - 1
            };
            values.extend([(0, bits), (1, bits), (63, bits), (64, bits), (max, bits)]);
            values.extend((0..1000).map(|_| {
                (
                    (rand::random::<u128>() >> rand::random_range(0..128)) & max,
                    bits,
                )
            }));
        }
        for (value, bits) in values {
            let mut written = String::new();
            push_digits(&mut written, value, bits.div_ceil(6) as usize);
            assert_eq!(
                read_digits(written.as_bytes(), bits),
                Some(value),
                "{written}"
            );
        }
        // Known values: 0xff, and a time whose six bytes base64url encodes
        // as "AYxaGyw9" (48 bits are whole digits, so the two agree).
        let mut written = String::new();
        push_digits(&mut written, 0xff, OWNER_DIGITS);
        push_digits(&mut written, 0x018c_5a1b_2c3d, TIME_DIGITS);
        push_digits(&mut written, u128::MAX, SECRET_DIGITS);
        assert_eq!(written, "AAAAAAAAAD_AYxaGyw9D_____________________");
    }

    #[test]
    fn both_formats_read_the_same() {
        let new = parse_token("AAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq83v").expect("new");
        let old = parse_token("00000000000000FF.018c5a1b2c3d.0123456789abcdef0123456789ABCDEF")
            .expect("old");
        assert_eq!(new, old);
        assert_eq!(new.owner, "00000000000000ff");
        assert_eq!(
            new.acquired_at,
            UNIX_EPOCH + Duration::from_millis(0x018c_5a1b_2c3d)
        );
        let widest =
            parse_token("ffffffffffffffff.ffffffffffffffff.0123456789abcdef0123456789abcdef")
                .expect("hex, widest time");
        assert_eq!(widest.owner, "ffffffffffffffff");
        let widest = parse_token("P__________.________.D_____________________+")
            .expect("base64url, widest parts");
        assert_eq!(widest.owner, "ffffffffffffffff");
        assert_eq!(
            widest.acquired_at,
            UNIX_EPOCH + Duration::from_millis((1 << 48) - 1)
        );
    }

    #[test]
    fn other_values_are_not_tokens() {
        let good = "AAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq83v";
        let old = "00000000000000ff.018c5a1b2c3d.0123456789abcdef0123456789abcdef";
        for bad in [
            "",
            "+",
            "++",
            ".",
            "..",
            "...",
            "x",
            "a.b.c",
            "0123456789abcdef0123456789abcdef",
            // Wrong lengths of a part, with the total kept or not.
            "AAAAAAAAAD.AYxaGyw9.ABI0VniavN7wEjRWeJq83vA",
            "AAAAAAAAAD_.AYxaGyw.ABI0VniavN7wEjRWeJq83v",
            "AAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq83vA",
            "AAAAAAAAAD_AYxaGyw9.ABI0VniavN7wEjRWeJq83vA",
            // More bits than the part holds.
            "QAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq83v",
            "AAAAAAAAAD_.AYxaGyw9.EBI0VniavN7wEjRWeJq83v",
            // Digits of standard base64, padding, a second '+', a sign.
            "AAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq8/v",
            "AAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq8+v",
            "AAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq83=",
            "AAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq83v++",
            "AAAAAAAAAD_.+YxaGyw9.ABI0VniavN7wEjRWeJq83v",
            // Multibyte characters in a token's length.
            "AAAAAAAAAé.AYxaGyw9.ABI0VniavN7wEjRWeJq83v",
            "AAAAAAAAAD_.AYxaGyw9.ABI0VniavN7wEjRWeJq€",
            "ééééééééééééééééééééé.",
            // The hex format with a sign, a non-hex digit, no time, or
            // a time over 64 bits.
            "00000000000000ff.+18c5a1b2c3d.0123456789abcdef0123456789abcdef",
            "00000000000000ff.018c5a1b2c3d.0123456789abcdef0123456789abcdeg",
            "0000000000000éff.018c5a1b2c3d.0123456789abcdef0123456789abcdef",
            "00000000000000ff..0123456789abcdef0123456789abcdef",
            "00000000000000ff.10000000000000000.0123456789abcdef0123456789abcdef",
            "00000000000000ff.018c5a1b2c3d.0123456789abcdef0123456789abcdef.",
        ] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
        // Every prefix, and every value with one byte replaced: parsed or
        // not, nothing panics, and what parses is still a token's shape.
        for token in [good, old] {
            for end in 0..=token.len() {
                let _ = parse_token(&token[..end]);
            }
            for at in 0..token.len() {
                for replacement in ["", "+", ".", "/", "é", "\u{0}", "AA"] {
                    let value = format!("{}{replacement}{}", &token[..at], &token[at + 1..]);
                    if let Some(info) = parse_token(&value) {
                        assert_eq!(info.owner.len(), 16, "{value:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn token_secrets_are_128_bit_and_unrelated() {
        let tokens: Vec<u128> = (0..2000).map(|_| secret(&new_token())).collect();
        let mut unique = tokens.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), tokens.len(), "tokens repeat");
        // Consecutive tokens differ in about half their bits: neither a
        // counter nor a timestamp, whose neighbours share most bits.
        let differing: u32 = tokens.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
        let mean = f64::from(differing) / (tokens.len() - 1) as f64;
        assert!((60.0..68.0).contains(&mean), "mean differing bits {mean}");
        // Every bit position is set in roughly half the tokens.
        for bit in 0..128 {
            let ones = tokens.iter().filter(|t| (*t >> bit) & 1 == 1).count();
            assert!((800..1200).contains(&ones), "bit {bit} set {ones} times");
        }
    }
}
