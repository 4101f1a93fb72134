//! Rendering keys so that different arguments never share a key.
//!
//! A rendered key names a run's lock and its dedupe record, so two calls
//! with different arguments must never render the same key: if they did,
//! the second caller would wait behind, or be handed the recorded result
//! of, a run it never asked for. Each argument is therefore written
//! escaped: letters, digits, `_`, `-` and `.` as they are, every other byte
//! (including `%` itself) as `%XX`. A key template admits after each
//! placeholder only its end or a character an escaped argument never
//! contains (checked by [`KeyTemplate::parse`]),
//! so the argument's end is always where that character first appears, and
//! the rendering is injective.

use std::fmt::{self, Write};
use std::sync::Arc;

/// Whether `c` is written as it is inside an escaped key part.
#[doc(hidden)]
pub fn is_plain(c: char) -> bool {
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
#[doc(hidden)]
pub fn escaped(text: &str) -> String {
    // Most names and arguments are plain already (every byte of a
    // character outside ASCII is not).
    if text.bytes().all(|b| is_plain(char::from(b))) {
        return text.to_owned();
    }
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
/// job built with `soloist::keyed_job` should render its key
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

/// A key template such as `invoice:{invoice_id}`: literal text with
/// `{name}` placeholders for the job's arguments (`{{` and `}}` for braces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    // Shared: a job's spec, with its template, is cloned for every run.
    template: Arc<str>,
    placeholders: Arc<[String]>,
}

impl KeyTemplate {
    /// Parses `template`; an empty template, an empty or unclosed
    /// placeholder, a stray `}`, or a placeholder followed by anything but
    /// the end of the key or a separator (a character other than a letter,
    /// digit, `_`, `-`, `.` or `%`) is an error.
    ///
    /// Each placeholder is rendered escaped ([`KeyPart`]),
    /// so that keys rendered from different arguments always differ: with
    /// `{a}:{b}`, the arguments `("x:y", "z")` render `x%3Ay:z` and
    /// `("x", "y:z")` render `x:y%3Az`.
    ///
    /// ```
    /// use soloist::KeyTemplate;
    /// let template = KeyTemplate::parse("invoice:{invoice_id}").unwrap();
    /// assert_eq!(template.placeholders(), ["invoice_id"]);
    /// assert!(KeyTemplate::parse("invoice:{").is_err());
    /// ```
    pub fn parse(template: &str) -> std::result::Result<Self, KeyTemplateError> {
        if template.is_empty() {
            return Err(KeyTemplateError::Empty);
        }
        let mut placeholders = Vec::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(KeyTemplateError::Unclosed {
                                    template: template.to_owned(),
                                });
                            }
                        }
                    }
                    let valid = name
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_alphabetic() || c == '_')
                        && name.chars().all(|c| c.is_alphanumeric() || c == '_');
                    if !valid {
                        return Err(KeyTemplateError::NotAnArgument {
                            template: template.to_owned(),
                            name,
                        });
                    }
                    // An argument is rendered escaped (see `KeyPart`): it
                    // ends where a character it never contains begins, so
                    // different arguments never render the same key.
                    let mut after = chars.clone();
                    let next = after.next();
                    let separated = match next {
                        None => true,
                        Some('{') => after.next() == Some('{'),
                        Some(c) => !is_plain(c) && c != '%',
                    };
                    if !separated {
                        return Err(KeyTemplateError::NotSeparated {
                            template: template.to_owned(),
                            name,
                        });
                    }
                    placeholders.push(name);
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                }
                '}' => {
                    return Err(KeyTemplateError::Stray {
                        template: template.to_owned(),
                    });
                }
                _ => {}
            }
        }
        Ok(KeyTemplate {
            template: template.into(),
            placeholders: placeholders.into(),
        })
    }

    /// The template as given.
    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// The argument names the template uses, in order.
    pub fn placeholders(&self) -> &[String] {
        &self.placeholders
    }
}

/// Why a key template was refused by [`KeyTemplate::parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyTemplateError {
    /// The template is empty.
    #[error("a key template must not be empty")]
    Empty,
    /// A `{` has no `}` after it.
    #[error("unclosed `{{` in `{template}`")]
    Unclosed {
        /// The template as given.
        template: String,
    },
    /// A `}` closes nothing (write `}}` for a literal one).
    #[error("stray `}}` in `{template}`")]
    Stray {
        /// The template as given.
        template: String,
    },
    /// A placeholder's name is not an argument name.
    #[error("`{{{name}}}` in `{template}` is not an argument name")]
    NotAnArgument {
        /// The template as given.
        template: String,
        /// What the braces hold.
        name: String,
    },
    /// A placeholder runs into text an argument could contain.
    #[error(
        "`{{{name}}}` in `{template}` must be followed by the end of the key or a separator such as `:` or `/` (not a letter, digit, `_`, `-`, `.`, `%` or another placeholder), so that different arguments never render the same key"
    )]
    NotSeparated {
        /// The template as given.
        template: String,
        /// The placeholder's name.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_templates_parse() {
        let template = KeyTemplate::parse("invoice:{invoice_id}:{region}").unwrap();
        assert_eq!(template.placeholders(), ["invoice_id", "region"]);
        assert_eq!(
            KeyTemplate::parse("{{literal}}")
                .unwrap()
                .placeholders()
                .len(),
            0
        );
        for good in ["{a}:{b}", "{a}/{b}", "{a}{{x}}", "x{a}"] {
            assert!(KeyTemplate::parse(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "", "a:{", "a:{}", "a:}", "a:{1x}", "a:{b-c}", "{a}{b}", "{a}x{b}", "{a}-{b}", "{a}%",
        ] {
            assert!(KeyTemplate::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(KeyTemplate::parse(""), Err(KeyTemplateError::Empty));
        assert!(matches!(
            KeyTemplate::parse("a:{b}x"),
            Err(KeyTemplateError::NotSeparated { name, .. }) if name == "b"
        ));
        assert!(matches!(
            KeyTemplate::parse("a:}"),
            Err(KeyTemplateError::Stray { .. })
        ));
    }

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
