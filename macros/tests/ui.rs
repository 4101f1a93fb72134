//! What `#[exclusive_job]` accepts, and the error each mistake gets.
//!
//! Regenerate the `.stderr` snapshots with
//! `TRYBUILD=overwrite cargo test -p soloist-macros --test ui`, then read
//! them: each should say what is wrong and point at the offending token.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    compile_fail(&cases);
}

/// The snapshots are the compiler's own words, which change between
/// releases, so they are checked only on the toolchain that wrote them.
#[rustversion::stable(1.95)]
fn compile_fail(cases: &trybuild::TestCases) {
    cases.compile_fail("tests/ui/fail/*.rs");
}

#[rustversion::not(stable(1.95))]
fn compile_fail(_: &trybuild::TestCases) {
    eprintln!("tests/ui/fail skipped: its snapshots are for Rust 1.95");
}
