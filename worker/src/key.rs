//! Rendering keys so that different arguments never share a key.
//!
//! A rendered key names a run's lock and its dedupe record, so two calls
//! with different arguments must never render the same key: if they did,
//! the second caller would wait behind, or be handed the recorded result
//! of, a run it never asked for. Each argument is therefore written
//! escaped: letters, digits, `_`, `-` and `.` as they are, every other byte
//! (including `%` itself) as `%XX`. A key template admits after each
//! placeholder only its end or a character an escaped argument never
//! contains (checked by [`KeyTemplate::parse`](crate::KeyTemplate::parse)),
//! so the argument's end is always where that character first appears, and
//! the rendering is injective.

use std::fmt::{self, Write};

/// Whether `c` is written as it is inside an escaped key part.
pub(crate) fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Writes `part` escaped to `out`; see the [module docs](self).
fn escape_into(out: &mut impl Write, part: &str) -> fmt::Result {
    for c in part.chars() {
        if is_plain(c) {
            out.write_char(c)?;
        } else {
            let mut bytes = [0; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                write!(out, "%{byte:02X}")?;
            }
        }
    }
    Ok(())
}

/// `text` escaped as one part of a key: what a job name or an argument
/// becomes inside a lock key, a dedupe record or a queue entry.
pub(crate) fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Writing to a String cannot fail.
    let _ = escape_into(&mut out, text);
    out
}

/// Displays a value escaped as one part of a key, so that keys rendered
/// from different arguments always differ: letters, digits, `_`, `-` and
/// `.` are written as they are, every other byte as `%XX`.
///
/// `#[exclusive_job(key = "...")]` renders every placeholder this way; a
/// job built with [`keyed_job`](crate::keyed_job) should render its key
/// with it too, separating the parts with a character that is never
/// written plainly, such as `:` or `/`.
///
/// ```
/// use soloist::KeyPart;
/// let key = |a: &str, b: &str| format!("{}:{}", KeyPart(a), KeyPart(b));
/// assert_eq!(key("x:y", "z"), "x%3Ay:z");
/// assert_ne!(key("x:y", "z"), key("x", "y:z"));
/// assert_eq!(format!("{}", KeyPart(42)), "42");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct KeyPart<T>(pub T);

impl<T: fmt::Display> fmt::Display for KeyPart<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Escapes what the value writes, as it writes it.
        struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl Write for Escaping<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                escape_into(self.0, s)
            }
        }
        write!(Escaping(f), "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_plain_characters_and_encodes_the_rest() {
        assert_eq!(escaped("invoice-42_a.b"), "invoice-42_a.b");
        assert_eq!(escaped("a:b/c%"), "a%3Ab%2Fc%25");
        assert_eq!(escaped("é"), "%C3%A9");
        assert_eq!(escaped(""), "");
        assert_eq!(KeyPart("a b").to_string(), "a%20b");
    }

    #[test]
    fn escaped_parts_never_contain_a_separator() {
        for text in ["x:y", "%3A", "a/b{c}", "::", "%"] {
            let part = escaped(text);
            assert!(part.chars().all(|c| is_plain(c) || c == '%'), "{part}");
        }
        // The escape character itself is escaped, so escaping is one-to-one.
        assert_ne!(escaped("%3A"), escaped(":"));
    }
}
