//! Parses the arguments of `#[exclusive_job(...)]`: which settings are
//! given, and the grammar of each value. Whether the settings fit together
//! and fit the function is for `expand.rs` to judge.

use std::time::Duration;

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::{Lit, LitStr, Token};

mod kw {
    syn::custom_keyword!(cron);
    syn::custom_keyword!(tz);
    syn::custom_keyword!(key);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(misfire);
    syn::custom_keyword!(retries);
    syn::custom_keyword!(backoff);
    syn::custom_keyword!(max_hold);
    syn::custom_keyword!(dedupe);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(on_lost);
    syn::custom_keyword!(missed);
    syn::custom_keyword!(name);
    syn::custom_keyword!(concurrency);
    syn::custom_keyword!(rate);
    syn::custom_keyword!(over_rate);
}

/// One `name = value` as written.
pub(crate) struct Setting<T> {
    /// The setting's name, e.g. `ttl`.
    pub(crate) name: &'static str,
    /// Where the name is written: errors about the setting as a whole.
    pub(crate) key: Span,
    /// Where the value is written: errors about the value.
    pub(crate) span: Span,
    /// The value, parsed.
    pub(crate) value: T,
}

/// `on_lost = "cancel" | "signal"`.
#[derive(Clone, Copy)]
pub(crate) enum OnLost {
    Cancel,
    Signal,
}

/// `missed = "skip" | "once" | "catch_up(N)"`.
#[derive(Clone, Copy)]
pub(crate) enum Missed {
    Skip,
    Once,
    CatchUp(u32),
}

/// The settings of `#[exclusive_job(...)]`; each is `None` unless given.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) cron: Option<Setting<LitStr>>,
    pub(crate) tz: Option<Setting<LitStr>>,
    pub(crate) key: Option<Setting<LitStr>>,
    pub(crate) ttl: Option<Setting<Duration>>,
    pub(crate) misfire: Option<Setting<Duration>>,
    pub(crate) retries: Option<Setting<u32>>,
    pub(crate) backoff: Option<Setting<Duration>>,
    pub(crate) max_hold: Option<Setting<Duration>>,
    pub(crate) dedupe: Option<Setting<Duration>>,
    pub(crate) wait: Option<Setting<Duration>>,
    pub(crate) on_lost: Option<Setting<OnLost>>,
    pub(crate) missed: Option<Setting<Missed>>,
    pub(crate) name: Option<Setting<String>>,
    pub(crate) concurrency: Option<Setting<u32>>,
    pub(crate) rate: Option<Setting<(u32, Duration)>>,
    pub(crate) over_rate: Option<Setting<OverRate>>,
}

/// `over_rate = "wait" | "reschedule"`.
#[derive(Clone, Copy)]
pub(crate) enum OverRate {
    Wait,
    Reschedule,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut seen = Seen::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            // Each arm: `setting => how its value parses`.
            macro_rules! settings {
                ($($name:ident => $value:expr),* $(,)?) => {
                    $(if lookahead.peek(kw::$name) {
                        let key = input.parse::<kw::$name>()?.span;
                        let name = stringify!($name);
                        setting(input, key, name, &mut args.$name, &mut seen, $value)?;
                    } else)* {
                        return Err(lookahead.error());
                    }
                };
            }
            settings! {
                cron => string,
                tz => string,
                key => string,
                ttl => duration,
                misfire => duration,
                retries => count,
                backoff => duration,
                max_hold => duration,
                dedupe => duration,
                wait => duration,
                on_lost => on_lost,
                missed => missed,
                name => job_name,
                concurrency => count,
                rate => rate,
                over_rate => over_rate,
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        seen.errors.finish()?;
        Ok(args)
    }
}

/// Parses `= value` after the setting `name`, written at `key`, into `slot`.
fn setting<T>(
    input: ParseStream<'_>,
    key: Span,
    name: &'static str,
    slot: &mut Option<Setting<T>>,
    seen: &mut Seen,
    value: fn(&'static str, &Lit) -> Result<T, String>,
) -> syn::Result<()> {
    input.parse::<Token![=]>()?;
    let lit: Lit = input.parse()?;
    if seen.names.contains(&name) {
        seen.errors.push(syn::Error::new(
            key,
            format!("`{name}` specified more than once"),
        ));
        return Ok(());
    }
    seen.names.push(name);
    match value(name, &lit) {
        Ok(value) => {
            *slot = Some(Setting {
                name,
                key,
                span: lit.span(),
                value,
            });
        }
        Err(message) => seen.errors.push(syn::Error::new(lit.span(), message)),
    }
    Ok(())
}

fn string(name: &'static str, lit: &Lit) -> Result<LitStr, String> {
    match lit {
        Lit::Str(lit) => Ok(lit.clone()),
        _ => Err(format!("`{name}` takes a string, e.g. `{name} = \"...\"`")),
    }
}

fn job_name(name: &'static str, lit: &Lit) -> Result<String, String> {
    let value = string(name, lit)?.value();
    if value.is_empty() {
        return Err("the job's `name` must not be empty".to_owned());
    }
    Ok(value)
}

fn duration(name: &'static str, lit: &Lit) -> Result<Duration, String> {
    let Lit::Str(text) = lit else {
        return Err(format!(
            "`{name}` takes a duration string such as \"30s\", \"1m\" or \"1h30m\""
        ));
    };
    soloist_parse::parse_duration(&text.value())
        .map_err(|reason| format!("invalid `{name}` duration: {reason}"))
}

fn count(name: &'static str, lit: &Lit) -> Result<u32, String> {
    let message = || format!("`{name}` takes a whole number from 0 to {}", u32::MAX);
    match lit {
        Lit::Int(int) if matches!(int.suffix(), "" | "u32") => {
            int.base10_parse().map_err(|_| message())
        }
        _ => Err(message()),
    }
}

fn on_lost(name: &'static str, lit: &Lit) -> Result<OnLost, String> {
    match string(name, lit)?.value().as_str() {
        "cancel" => Ok(OnLost::Cancel),
        "signal" => Ok(OnLost::Signal),
        other => Err(format!(
            "`{name}` is \"cancel\" (drop the run at once) or \"signal\" (let it see \
             `ctx.lost()`), not \"{other}\""
        )),
    }
}

fn rate(name: &'static str, lit: &Lit) -> Result<(u32, Duration), String> {
    let Lit::Str(text) = lit else {
        return Err(format!(
            "`{name}` takes a rate string such as \"100/1m\" or \"50/1s\""
        ));
    };
    soloist_parse::parse_rate(&text.value())
        .map(|rate| (rate.count, rate.period))
        .map_err(|reason| format!("invalid `{name}`: {reason}"))
}

fn over_rate(name: &'static str, lit: &Lit) -> Result<OverRate, String> {
    match string(name, lit)?.value().as_str() {
        "wait" => Ok(OverRate::Wait),
        "reschedule" => Ok(OverRate::Reschedule),
        other => Err(format!(
            "`{name}` is \"wait\" (hold the key until the limit admits the run) or \
             \"reschedule\" (give it back and return `RunOutcome::RateLimited`), not `{other}`"
        )),
    }
}

fn missed(name: &'static str, lit: &Lit) -> Result<Missed, String> {
    let text = string(name, lit)?.value();
    let catch_up = text
        .strip_prefix("catch_up(")
        .and_then(|rest| rest.strip_suffix(')'))
        .map(|count| count.trim().parse::<u32>());
    match (text.as_str(), catch_up) {
        ("skip", _) => Ok(Missed::Skip),
        ("once", _) => Ok(Missed::Once),
        (_, Some(Ok(0))) => Err(format!(
            "`{name} = \"catch_up(0)\"` runs no missed tick: write `\"skip\"`"
        )),
        (_, Some(Ok(count))) => Ok(Missed::CatchUp(count)),
        _ => Err(format!(
            "`{name}` is \"skip\", \"once\" or \"catch_up(N)\" with N from 1 to {}, not \"{text}\"",
            u32::MAX
        )),
    }
}

/// The settings parsed so far, and the mistakes found in them: a bad value
/// or a repeated setting does not stop the parse, so that the user sees
/// every such mistake at once. Bad syntax does.
#[derive(Default)]
struct Seen {
    names: Vec<&'static str>,
    errors: Errors,
}

/// Errors gathered so that one compilation reports them all.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> syn::Result<Args> {
        syn::parse_str(args)
    }

    fn error(args: &str) -> String {
        match parse(args) {
            Ok(_) => panic!("{args} parsed"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn values_parse() {
        let args = parse(
            r#"cron = "0 * * * * *", ttl = "1m30s", retries = 3, on_lost = "signal",
               missed = "catch_up(5)", name = "sweeper","#,
        )
        .unwrap();
        assert_eq!(args.cron.unwrap().value.value(), "0 * * * * *");
        assert_eq!(args.ttl.unwrap().value, Duration::from_secs(90));
        assert_eq!(args.retries.unwrap().value, 3);
        assert!(matches!(args.on_lost.unwrap().value, OnLost::Signal));
        assert!(matches!(args.missed.unwrap().value, Missed::CatchUp(5)));
        assert_eq!(args.name.unwrap().value, "sweeper");
        assert!(matches!(
            parse(r#"missed = "skip""#).unwrap().missed.unwrap().value,
            Missed::Skip
        ));
        assert!(parse("").unwrap().cron.is_none());
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        assert!(error(r#"ttl = 30"#).contains("`ttl` takes a duration string"));
        assert!(error(r#"wait = "soon""#).contains("invalid `wait` duration"));
        assert!(error(r#"retries = 4294967296"#).contains("`retries` takes a whole number"));
        assert!(error(r#"concurrency = "3""#).contains("`concurrency` takes a whole number"));
        assert!(error(r#"rate = 100"#).contains("`rate` takes a rate string"));
        assert!(error(r#"rate = "100/soon""#).contains("invalid `rate`"));
        assert!(error(r#"over_rate = "later""#).contains("`over_rate` is \"wait\""));
        let args = parse(r#"key = "{id}", rate = "50/1s", concurrency = 4"#).unwrap();
        assert_eq!(args.rate.unwrap().value, (50, Duration::from_secs(1)));
        assert_eq!(args.concurrency.unwrap().value, 4);
        assert!(error(r#"retries = 3u8"#).contains("`retries` takes a whole number"));
        assert!(error(r#"on_lost = "panic""#).contains("not \"panic\""));
        assert!(error(r#"missed = "catch_up(0)""#).contains("write `\"skip\"`"));
        assert!(error(r#"missed = "all""#).contains("not \"all\""));
        assert!(error(r#"name = """#).contains("must not be empty"));
        assert!(error(r#"ttl = "1s", ttl = "2s""#).contains("`ttl` specified more than once"));
        assert!(error(r#"every = "1s""#).starts_with("expected one of: `cron`"));
        assert!(error(r#"ttl "1s""#).contains("expected `=`"));
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let Err(errors) = parse(r#"ttl = "x", wait = "y", ttl = "1s""#) else {
            panic!("parsed");
        };
        assert_eq!(errors.into_iter().count(), 3);
    }
}
