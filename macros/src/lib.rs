//! Procedural macros for [soloist](https://docs.rs/soloist).
//!
//! `#[exclusive_job]` comes with the worker runtime; this release of the
//! crate exports no macro yet.
