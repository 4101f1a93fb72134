//! Cross-site request forgery: a POST is carried out only with the
//! dashboard's form token and, when the browser names the page it came
//! from, from an allowed origin.
//!
//! The token is drawn once per router (per process for `soloist
//! dashboard`) from the operating system's random source and put in a
//! hidden field of every form; another site's page cannot read it (the
//! same-origin policy), so it cannot forge a form that carries it. The
//! `Origin` check is a second, independent line: browsers send `Origin`
//! on every cross-origin POST, and `Sec-Fetch-Site` where they do not.

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};
use rand::RngCore;

/// A new unguessable form token: 256 random bits, hex-encoded.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a POST was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The form carries no token, or not this dashboard's.
    Token,
    /// The request comes from another site's page.
    Origin,
}

impl Refused {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refused::Token => {
                "refused: the form token is missing or stale (reload the page and try again)"
            }
            Refused::Origin => "refused: the request comes from another site",
        }
    }
}

/// Whether a POST with these headers and this form token may be carried
/// out by the dashboard whose token is `token`.
pub(crate) fn check(
    headers: &HeaderMap,
    form_token: Option<&str>,
    token: &str,
    allowed_origins: &[String],
) -> Result<(), Refused> {
    match form_token {
        Some(sent) if constant_time_eq(sent.as_bytes(), token.as_bytes()) => {}
        _ => return Err(Refused::Token),
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().map_err(|_| Refused::Origin)?;
        let origin = origin.trim_end_matches('/');
        if allowed_origins.iter().any(|allowed| allowed == origin) {
            return Ok(());
        }
        // `null` (a sandboxed or privacy-sensitive context) has no host.
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .ok_or(Refused::Origin)?;
        let host = headers
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .ok_or(Refused::Origin)?;
        if !authority.eq_ignore_ascii_case(host) {
            return Err(Refused::Origin);
        }
    } else if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.to_str(), Ok("same-origin" | "none"))
    {
        return Err(Refused::Origin);
    }
    Ok(())
}

/// Compares without stopping at the first difference, so the time taken
/// says nothing about how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    const TOKEN: &str = "5f2b";

    #[test]
    fn tokens_are_long_and_differ() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_post_without_the_token_is_refused() {
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(check(&same, None, TOKEN, &[]), Err(Refused::Token));
        assert_eq!(check(&same, Some(""), TOKEN, &[]), Err(Refused::Token));
        assert_eq!(check(&same, Some("5f2c"), TOKEN, &[]), Err(Refused::Token));
        assert_eq!(check(&same, Some("5f2b0"), TOKEN, &[]), Err(Refused::Token));
        assert_eq!(check(&same, Some(TOKEN), TOKEN, &[]), Ok(()));
    }

    #[test]
    fn a_post_from_a_foreign_origin_is_refused_even_with_the_token() {
        for origin in [
            "http://evil.example",
            "https://127.0.0.1:8081",
            "http://127.0.0.1:8080.evil.example",
            "null",
            "127.0.0.1:8080",
        ] {
            let mut map = headers(&[("host", "127.0.0.1:8080")]);
            map.insert(ORIGIN, HeaderValue::from_static(origin));
            assert_eq!(
                check(&map, Some(TOKEN), TOKEN, &[]),
                Err(Refused::Origin),
                "{origin}"
            );
        }
        let no_host = headers(&[("origin", "http://127.0.0.1:8080")]);
        assert_eq!(
            check(&no_host, Some(TOKEN), TOKEN, &[]),
            Err(Refused::Origin)
        );
        let cross = headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(check(&cross, Some(TOKEN), TOKEN, &[]), Err(Refused::Origin));
    }

    #[test]
    fn the_own_host_and_allowed_origins_pass() {
        let https = headers(&[
            ("host", "ops.example.com"),
            ("origin", "https://ops.example.com"),
        ]);
        assert_eq!(check(&https, Some(TOKEN), TOKEN, &[]), Ok(()));
        let proxied = headers(&[
            ("host", "10.0.0.7:8080"),
            ("origin", "https://ops.example.com"),
        ]);
        assert_eq!(
            check(&proxied, Some(TOKEN), TOKEN, &[]),
            Err(Refused::Origin)
        );
        let allowed = ["https://ops.example.com".to_owned()];
        assert_eq!(check(&proxied, Some(TOKEN), TOKEN, &allowed), Ok(()));
        // Non-browser clients send neither header; the token still guards.
        assert_eq!(check(&HeaderMap::new(), Some(TOKEN), TOKEN, &[]), Ok(()));
        let same = headers(&[("sec-fetch-site", "same-origin")]);
        assert_eq!(check(&same, Some(TOKEN), TOKEN, &[]), Ok(()));
    }
}
