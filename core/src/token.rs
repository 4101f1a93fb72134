//! Owner tokens: what proves, inside the backend, which acquisition holds a key.
//!
//! A token reads `<owner id>.<acquired at>.<secret>`: the owner id names
//! this process (16 hex digits, random, fixed for the life of the process),
//! the acquisition time is the local wall clock in Unix milliseconds (hex),
//! and the secret is 128 random bits (32 hex digits). The scripts compare
//! tokens whole, as before; only the secret makes a token unforgeable. The
//! first two parts let an operator read who holds a key and since when,
//! without a round trip more at acquisition: a worker announces its owner
//! id in the fleet registry.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// This process's owner id, which every token it issues starts with.
///
/// ```
/// let id = soloist::owner_id();
/// assert_eq!(id.len(), 16);
/// assert_eq!(id, soloist::owner_id());
/// ```
pub fn owner_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{:016x}", rand::random::<u64>()))
}

/// A fresh owner token: this process's [`owner_id`], the local time and
/// 128 bits from the thread-local CSPRNG (ChaCha, seeded from the operating
/// system). Nothing about one token predicts another's secret, so no client
/// can forge a release or an extension.
///
/// Written digit by digit into one allocation of the right size: every
/// acquisition attempt makes one, and `format!` with padded hex fields
/// cost several reallocations and most of a lock cycle's formatting time.
pub(crate) fn new_token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    let owner = owner_id();
    let mut token = String::with_capacity(owner.len() + 2 + 32 + 32);
    token.push_str(owner);
    token.push('.');
    push_hex(&mut token, now, 12);
    token.push('.');
    push_hex(&mut token, rand::random::<u128>(), 32);
    token
}

/// Appends `value` in lowercase hex, zero-padded to at least `width`
/// digits: what `{value:0width$x}` writes.
fn push_hex(out: &mut String, value: u128, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let significant = (128 - value.leading_zeros() as usize).div_ceil(4);
    for at in (0..significant.max(width).max(1)).rev() {
        let nibble = (value >> (4 * at.min(31))) as usize & 0xf;
        out.push(char::from(if at < 32 { DIGITS[nibble] } else { b'0' }));
    }
}

/// What a lock's stored value says about its holder; see [`parse_token`].
///
/// ```
/// let info = soloist::parse_token("00000000000000ff.018c5a1b2c3d.0123456789abcdef0123456789abcdef").unwrap();
/// assert_eq!(info.acquired_at, std::time::UNIX_EPOCH + std::time::Duration::from_millis(0x018c5a1b2c3d));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The owner id of the process that holds the lock ([`owner_id`] there).
    pub owner: String,
    /// When the holder's acquisition was sent, by its local clock.
    pub acquired_at: SystemTime,
}

/// Reads the owner and acquisition time out of a lock's stored value (the
/// value of its `lock:` key, with or without the `+` that marks waiters).
/// `None` for tokens of another shape (issued by an older soloist).
///
/// ```
/// use soloist::parse_token;
/// let info = parse_token("00000000000000ff.18c5a1b2c3d.0123456789abcdef0123456789abcdef+").unwrap();
/// assert_eq!(info.owner, "00000000000000ff");
/// assert!(parse_token("0123456789abcdef0123456789abcdef").is_none());
/// ```
pub fn parse_token(value: &str) -> Option<TokenInfo> {
    let value = value.strip_suffix('+').unwrap_or(value);
    let mut parts = value.split('.');
    let (owner, at, secret) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || owner.len() != 16
        || secret.len() != 32
        || !owner.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let millis = u64::from_str_radix(at, 16).ok()?;
    Some(TokenInfo {
        owner: owner.to_owned(),
        acquired_at: UNIX_EPOCH + Duration::from_millis(millis),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(token: &str) -> u128 {
        let secret = token.rsplit('.').next().expect("secret");
        assert_eq!(secret.len(), 32);
        u128::from_str_radix(secret, 16).expect("hex")
    }

    #[test]
    fn tokens_carry_owner_and_time() {
        let before = SystemTime::now() - Duration::from_millis(1);
        let token = new_token();
        let info = parse_token(&token).expect("parses");
        assert_eq!(info.owner, owner_id());
        assert!(info.acquired_at >= before && info.acquired_at <= SystemTime::now());
        assert_eq!(parse_token(&format!("{token}+")), Some(info));
        for bad in [
            "",
            "a.b.c",
            "x",
            "0123456789abcdef.zz.0123456789abcdef0123456789abcdef",
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn hex_is_written_as_format_writes_it() {
        let mut values = vec![0, 1, 0xf, 0x10, u128::from(u64::MAX), u128::MAX];
        values.extend((0..1000).map(|_| rand::random::<u128>() >> rand::random_range(0..128)));
        for value in values {
            for width in [0, 1, 12, 32, 40] {
                let mut written = String::new();
                push_hex(&mut written, value, width);
                assert_eq!(written, format!("{value:0width$x}"), "{value} at {width}");
            }
        }
    }

    #[test]
    fn token_secrets_are_128_bit_hex_and_unrelated() {
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
