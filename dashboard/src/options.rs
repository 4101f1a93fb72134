//! What a mounted dashboard allows and how it refreshes.

use std::time::Duration;

/// How a dashboard behaves: read-only unless [`actions`](Options::actions)
/// is turned on, how often its pages reload themselves, and which other
/// origins may post its forms.
///
/// ```
/// use std::time::Duration;
/// use soloist::dashboard::Options;
/// let options = Options::default()
///     .actions(true)
///     .refresh(Duration::from_secs(10))
///     .allowed_origin("https://ops.example.com");
/// assert!(options.actions_enabled());
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Options {
    pub(crate) actions: bool,
    pub(crate) refresh: Option<Duration>,
    pub(crate) allowed_origins: Vec<String>,
}

impl Default for Options {
    /// Read-only, reloading every 5 seconds, forms accepted from the
    /// request's own host only.
    fn default() -> Self {
        Options {
            actions: false,
            refresh: Some(Duration::from_secs(5)),
            allowed_origins: Vec::new(),
        }
    }
}

impl Options {
    /// Whether the pages offer, and the router accepts, the controls:
    /// pause, resume, trigger now, replay and purge dead letters. Off by
    /// default: every POST is refused with 403.
    pub fn actions(mut self, enabled: bool) -> Self {
        self.actions = enabled;
        self
    }

    /// How often an open page reloads itself (whole seconds, at least 1);
    /// `None` turns reloading off.
    pub fn refresh(mut self, every: impl Into<Option<Duration>>) -> Self {
        self.refresh = every.into();
        self
    }

    /// An origin (`scheme://host[:port]`) besides the request's own `Host`
    /// whose pages may post the dashboard's forms: the public origin when a
    /// proxy rewrites `Host`.
    pub fn allowed_origin(mut self, origin: impl Into<String>) -> Self {
        self.allowed_origins
            .push(origin.into().trim_end_matches('/').to_owned());
        self
    }

    /// Whether the controls are enabled.
    pub fn actions_enabled(&self) -> bool {
        self.actions
    }

    /// The reload period in whole seconds, if any.
    pub(crate) fn refresh_secs(&self) -> Option<u64> {
        self.refresh.map(|every| every.as_secs().max(1))
    }
}
