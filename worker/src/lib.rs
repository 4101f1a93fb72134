//! The soloist worker runtime: a job registry, a cron scheduler and keyed
//! jobs, each dispatched under a [`soloist_core`] lock so that it runs once
//! across a fleet.
//!
//! This release carries the lock layer only; the runtime builds on
//! [`soloist_core::LockClient`], which it takes as its backend.

pub use soloist_core::LockClient;
