//! The in-process backend: the same semantics as Redis inside one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::backend::{Attempt, Backend, LeaseKind, Record, Renewal, Renewed, Waiting};
use crate::error::{LockError, Result};
use crate::fence::{FencedValue, FencedWrite};
use crate::notice::{Listener, NoticeBoard};

/// How long a fence counter lives before it starts again from the clock.
const FENCE_LIFETIME: Duration = Duration::from_secs(7 * 86_400);

#[derive(Debug, Default)]
pub(crate) struct MemoryBackend {
    state: Mutex<State>,
    board: Arc<NoticeBoard>,
}

#[derive(Debug, Default)]
struct State {
    locks: HashMap<String, Held>,
    /// Each key's fence counter and when it was seeded.
    fences: HashMap<String, (u64, Instant)>,
    fenced: HashMap<String, Stored>,
    /// Each read-write lock's holders.
    rw: HashMap<String, Rw>,
    /// Each rate limit's theoretical arrival time.
    rates: HashMap<String, Instant>,
    /// Each semaphore's holders: owner token and lease expiry.
    semaphores: HashMap<String, Vec<Held>>,
    /// Semaphore count after the last sweep of those with no live holder.
    semaphores_swept_at: usize,
    /// Lock count after the last sweep of expired entries.
    swept_at: usize,
    /// Record count after the last sweep of expired records.
    records_swept_at: usize,
    /// Counter count after the last sweep of expired fence counters.
    fences_swept_at: usize,
}

/// A fenced value.
#[derive(Debug)]
struct Stored {
    fence: u64,
    value: Vec<u8>,
    expires: Option<Instant>,
}

/// A read-write lock: its readers, its writer, and a waiting writer's
/// intent (the acquisition's id, and when the intent lapses).
#[derive(Debug, Default)]
struct Rw {
    readers: Vec<Held>,
    writer: Option<Held>,
    intent: Option<(String, Instant)>,
}

impl Rw {
    /// Drops what ran out.
    fn live(&mut self, now: Instant) -> &mut Self {
        self.readers.retain(|held| held.expires > now);
        if self.writer.as_ref().is_some_and(|held| held.expires <= now) {
            self.writer = None;
        }
        if self.intent.as_ref().is_some_and(|(_, until)| *until <= now) {
            self.intent = None;
        }
        self
    }
}

/// How long a waiting writer's intent keeps new readers out after its
/// last attempt, as `scripts/rw_acquire.lua` keeps it.
const INTENT: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Held {
    token: String,
    expires: Instant,
}

impl State {
    /// The live holder of `key`, dropping an expired one.
    fn holder(&mut self, key: &str, now: Instant) -> Option<&mut Held> {
        if self.locks.get(key).is_some_and(|held| held.expires <= now) {
            self.locks.remove(key);
        }
        self.locks.get_mut(key)
    }

    /// The live record of `resource`, dropping an expired one.
    fn record(&mut self, resource: &str, now: Instant) -> Option<&Stored> {
        let expired = |record: &Stored| record.expires.is_some_and(|at| at <= now);
        if self.fenced.get(resource).is_some_and(expired) {
            self.fenced.remove(resource);
        }
        self.fenced.get(resource)
    }

    /// Locks and records that expire without being touched again would stay
    /// forever; sweep each map whenever it has doubled since its last sweep.
    fn sweep(&mut self, now: Instant) {
        if self.locks.len() >= 2 * self.swept_at.max(512) {
            self.locks.retain(|_, held| held.expires > now);
            self.swept_at = self.locks.len();
        }
        if self.fences.len() >= 2 * self.fences_swept_at.max(512) {
            self.fences
                .retain(|_, (_, seeded)| now.duration_since(*seeded) < FENCE_LIFETIME);
            self.fences_swept_at = self.fences.len();
        }
        if self.rw.len() >= 2 * self.semaphores_swept_at.max(512) {
            self.rw.retain(|_, rw| {
                let rw = rw.live(now);
                !rw.readers.is_empty() || rw.writer.is_some() || rw.intent.is_some()
            });
        }
        if self.rates.len() >= 2 * self.semaphores_swept_at.max(512) {
            self.rates.retain(|_, tat| *tat > now);
        }
        if self.semaphores.len() >= 2 * self.semaphores_swept_at.max(512) {
            self.semaphores
                .retain(|_, holders| holders.iter().any(|held| held.expires > now));
            self.semaphores_swept_at = self.semaphores.len();
        }
        if self.fenced.len() >= 2 * self.records_swept_at.max(512) {
            self.fenced
                .retain(|_, record| record.expires.is_none_or(|at| at > now));
            self.records_swept_at = self.fenced.len();
        }
    }

    /// The next fence for `key`; a new counter starts at the wall clock in
    /// microseconds, as the Redis backend does, so fences also increase across
    /// restarts of a process that stores them elsewhere.
    /// Like the Redis backend's, a counter lives a week from its seeding and
    /// then starts again from the clock, so counters do not pile up.
    fn next_fence(&mut self, key: &str, now: Instant) -> u64 {
        let seed = || {
            let micros = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_micros() as u64);
            (micros.saturating_sub(1), now)
        };
        let counter = self.fences.entry(key.to_owned()).or_insert_with(seed);
        if now.duration_since(counter.1) >= FENCE_LIFETIME {
            *counter = seed();
        }
        counter.0 += 1;
        counter.0
    }

    /// The live holders of semaphore `name`, dropping expired ones.
    fn holders(&mut self, name: &str, now: Instant) -> &mut Vec<Held> {
        let holders = self.semaphores.entry(name.to_owned()).or_default();
        holders.retain(|held| held.expires > now);
        holders
    }

    fn lock(mutex: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for MemoryBackend {
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        counter: &'a str,
        token: &'a str,
        ttl: Duration,
        _waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        let now = Instant::now();
        let mut state = State::lock(&self.state);
        let attempt = match state.holder(key, now) {
            Some(held) => Attempt::Held {
                expires_in: Some(held.expires - now),
            },
            None => {
                state.sweep(now);
                state.locks.insert(
                    key.to_owned(),
                    Held {
                        token: token.to_owned(),
                        expires: now + ttl,
                    },
                );
                Attempt::Acquired(state.next_fence(counter, now))
            }
        };
        futures::future::ready(Ok(attempt)).boxed()
    }

    fn try_acquire_unfenced<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        // Issuing a fence costs nothing here; the caller just gets none.
        self.try_acquire(key, key, token, ttl, waiting)
            .map(|attempt| {
                attempt.map(|attempt| match attempt {
                    Attempt::Acquired(_) => Attempt::Acquired(0),
                    other => other,
                })
            })
            .boxed()
    }

    fn try_acquire_permit<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        permits: u32,
        ttl: Duration,
        _waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        let now = Instant::now();
        let mut state = State::lock(&self.state);
        state.sweep(now);
        let holders = state.holders(name, now);
        let attempt = if holders.len() >= permits as usize {
            Attempt::Held {
                expires_in: holders.iter().map(|held| held.expires - now).min(),
            }
        } else {
            holders.push(Held {
                token: token.to_owned(),
                expires: now + ttl,
            });
            // Fences of a semaphore come from a counter of its own, apart
            // from the lock of the same name.
            Attempt::Acquired(state.next_fence(&crate::semaphore::line(name), now))
        };
        futures::future::ready(Ok(attempt)).boxed()
    }

    fn release_permit<'a>(&'a self, name: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        let now = Instant::now();
        let released = {
            let mut state = State::lock(&self.state);
            let holders = state.holders(name, now);
            let before = holders.len();
            holders.retain(|held| held.token != token);
            let released = holders.len() < before;
            if holders.is_empty() {
                state.semaphores.remove(name);
            }
            released
        };
        if released {
            self.board.notify(&crate::semaphore::line(name));
        }
        futures::future::ready(Ok(released)).boxed()
    }

    fn try_acquire_rw<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        request: &'a str,
        write: bool,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        let now = Instant::now();
        let mut state = State::lock(&self.state);
        state.sweep(now);
        let rw = state.rw.entry(name.to_owned()).or_default().live(now);
        let held = |until: Instant| Attempt::Held {
            expires_in: Some(until - now),
        };
        let intend = |rw: &mut Rw| {
            // Only a writer that waits keeps readers out for itself.
            if waiting.is_some() && rw.intent.as_ref().is_none_or(|(id, _)| id == request) {
                rw.intent = Some((request.to_owned(), now + INTENT));
            }
        };
        let holder = Held {
            token: token.to_owned(),
            expires: now + ttl,
        };
        let blocked = if let Some(writer) = &rw.writer {
            let until = writer.expires;
            if write {
                intend(rw);
            }
            Some(held(until))
        } else if let Some((id, until)) = &rw.intent
            && (!write || id != request)
        {
            Some(held(*until))
        } else if write && !rw.readers.is_empty() {
            let first = rw.readers.iter().map(|reader| reader.expires).min();
            intend(rw);
            first.map(held)
        } else {
            if write {
                rw.writer = Some(holder);
                rw.intent = None;
            } else {
                rw.readers.push(holder);
            }
            None
        };
        let attempt = match blocked {
            Some(attempt) => attempt,
            None => Attempt::Acquired(state.next_fence(&crate::rwlock::line(name), now)),
        };
        futures::future::ready(Ok(attempt)).boxed()
    }

    fn release_rw<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        write: bool,
    ) -> BoxFuture<'a, Result<bool>> {
        let now = Instant::now();
        let (released, wake) = {
            let mut state = State::lock(&self.state);
            match state.rw.get_mut(name).map(|rw| rw.live(now)) {
                Some(rw) if write => {
                    let ours = rw.writer.as_ref().is_some_and(|held| held.token == token);
                    if ours {
                        rw.writer = None;
                    }
                    (ours, ours)
                }
                Some(rw) => {
                    let before = rw.readers.len();
                    rw.readers.retain(|held| held.token != token);
                    let released = rw.readers.len() < before;
                    (released, released && rw.readers.is_empty())
                }
                None => (false, false),
            }
        };
        if wake {
            self.board.notify(&crate::rwlock::line(name));
        }
        futures::future::ready(Ok(released)).boxed()
    }

    fn admit<'a>(
        &'a self,
        name: &'a str,
        interval: Duration,
    ) -> BoxFuture<'a, Result<Option<Duration>>> {
        // GCRA with no burst tolerance, as `scripts/rate_gcra.lua`.
        let now = Instant::now();
        let mut state = State::lock(&self.state);
        state.sweep(now);
        let wait = match state.rates.get(name) {
            Some(&tat) if tat > now => Some(tat - now),
            _ => {
                state.rates.insert(name.to_owned(), now + interval);
                None
            }
        };
        futures::future::ready(Ok(wait)).boxed()
    }

    fn extend<'a>(&'a self, leases: &'a [Renewal<'a>]) -> BoxFuture<'a, Result<Vec<Renewed>>> {
        let now = Instant::now();
        let mut state = State::lock(&self.state);
        let renewed = leases
            .iter()
            .map(|lease| {
                let held = match lease.kind {
                    LeaseKind::Lock => state.holder(lease.key, now),
                    LeaseKind::Permit => state
                        .holders(lease.key, now)
                        .iter_mut()
                        .find(|held| held.token == lease.token),
                    LeaseKind::Read => state.rw.get_mut(lease.key).and_then(|rw| {
                        rw.live(now)
                            .readers
                            .iter_mut()
                            .find(|held| held.token == lease.token)
                    }),
                    LeaseKind::Write => state
                        .rw
                        .get_mut(lease.key)
                        .and_then(|rw| rw.live(now).writer.as_mut()),
                };
                match held {
                    Some(held) if held.token == lease.token => {
                        held.expires = now + lease.ttl;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            })
            .collect();
        futures::future::ready(Ok(renewed)).boxed()
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        let now = Instant::now();
        let released = {
            let mut state = State::lock(&self.state);
            let ours = state
                .holder(key, now)
                .is_some_and(|held| held.token == token);
            if ours {
                state.locks.remove(key);
            }
            ours
        };
        if released {
            self.board.notify(key);
        }
        futures::future::ready(Ok(released)).boxed()
    }

    fn listen(&self, key: &str) -> Listener {
        let notices = self.board.join(key);
        let mut listener = Listener::new(key, notices, true, self.board.clone());
        // Releases post to the board at once: every one from now on is heard.
        listener.set_live_since(Some(Instant::now()));
        listener
    }

    fn subscribe<'a>(&'a self, _listener: &'a mut Listener) -> BoxFuture<'a, ()> {
        futures::future::ready(()).boxed()
    }

    fn fenced_set<'a>(
        &'a self,
        resource: &'a str,
        fence: u64,
        record: Record<'a>,
    ) -> BoxFuture<'a, Result<FencedWrite>> {
        if !record.effects.is_empty() {
            let refused =
                LockError::invalid("effects", "only a Redis backend can apply Redis commands");
            return futures::future::ready(Err(refused)).boxed();
        }
        let (value, ttl) = (record.value, record.ttl);
        let now = Instant::now();
        let mut state = State::lock(&self.state);
        let held = |state: &mut State, (key, token): (&str, &str)| {
            state
                .holder(key, now)
                .is_some_and(|held| held.token == token)
        };
        if let Some(owner) = record.owner
            && !held(&mut state, owner)
        {
            return futures::future::ready(Ok(FencedWrite::NotHeld)).boxed();
        }
        let outcome = match state.record(resource, now) {
            Some(record) if record.fence > fence => FencedWrite::Rejected {
                highest: record.fence,
            },
            _ => {
                let record = Stored {
                    fence,
                    value: value.to_vec(),
                    // A ttl past what the clock can count keeps the record.
                    expires: ttl.and_then(|ttl| now.checked_add(ttl)),
                };
                state.sweep(now);
                state.fenced.insert(resource.to_owned(), record);
                FencedWrite::Accepted
            }
        };
        futures::future::ready(Ok(outcome)).boxed()
    }

    fn server_time(&self) -> BoxFuture<'_, Result<Option<SystemTime>>> {
        futures::future::ready(Ok(None)).boxed()
    }

    fn fenced_get<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<Option<FencedValue>>> {
        let mut state = State::lock(&self.state);
        let stored = state
            .record(resource, Instant::now())
            .map(|record| FencedValue {
                fence: record.fence,
                value: record.value.clone(),
            });
        futures::future::ready(Ok(stored)).boxed()
    }
}
