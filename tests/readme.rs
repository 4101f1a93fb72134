//! Every Rust block of the README compiles, against the dependencies the
//! README tells a user to write.
//!
//! A block with a `fn main` is a whole program and is built as one. Any
//! other block is a fragment: it is compiled as the body of an async fn
//! whose parameters and neighbours supply the names fragments lean on
//! (`locks`, `url`, `ctx`, a `charge` job ...). The project is generated
//! from the README's first `[dependencies]` block (the quickstart's), with
//! `soloist` pointed at this checkout and given the features any later
//! block turns on, and checked with `cargo check`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The names fragments use without defining them.
const FRAGMENT_CONTEXT: &str = r#"
#![allow(unused, unreachable_code, clippy::all)]
use soloist::*;

#[exclusive_job(key = "invoice:{invoice_id}", ttl = "1m", dedupe = "24h")]
async fn charge(ctx: JobContext, invoice_id: u64) -> Result<String, std::io::Error> {
    Ok(format!("{invoice_id}"))
}

async fn build_report() -> String {
    String::new()
}
"#;

const FRAGMENT_PARAMETERS: &str =
    "url: &str, locks: LockClient, ctx: JobContext, customer: &str, cents: i64";

/// A fenced block of the README: its info string and its text.
struct Block {
    info: String,
    text: String,
    line: usize,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (index, line) in readme.lines().enumerate() {
        match (&mut open, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_owned(),
                    text: String::new(),
                    line: index + 1,
                });
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "the README ends inside a code block");
    blocks
}

fn is_rust(block: &Block) -> bool {
    block.info.split(',').next() == Some("rust") && !block.info.contains("ignore")
}

/// The quickstart's dependencies, with `soloist` taken from this checkout
/// and given `features` as well as its own.
fn dependencies(blocks: &[Block], root: &Path, features: &[String]) -> String {
    let block = blocks
        .iter()
        .find(|block| block.info == "toml" && block.text.contains("[dependencies]"))
        .expect("the README has a [dependencies] block");
    let path = format!("path = {:?}", root.display().to_string());
    let mut out = String::new();
    for line in block.text.lines() {
        if let Some(spec) = line.strip_prefix("soloist = ") {
            let mut features: Vec<String> = features.to_vec();
            features.extend(quoted_features(spec));
            features.sort();
            features.dedup();
            out.push_str(&format!(
                "soloist = {{ {path}, features = {features:?} }}\n"
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The features a `soloist = { ..., features = [...] }` line names.
fn quoted_features(spec: &str) -> Vec<String> {
    let Some(list) = spec.split_once("features").map(|(_, rest)| rest) else {
        return Vec::new();
    };
    let list = list.split(']').next().unwrap_or_default();
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_rust_block_of_the_readme_compiles() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = blocks(&readme);
    let features: Vec<String> = blocks
        .iter()
        .filter(|block| block.info == "toml")
        .flat_map(|block| {
            block
                .text
                .lines()
                .filter_map(|line| line.strip_prefix("soloist = "))
                .flat_map(quoted_features)
                .collect::<Vec<_>>()
        })
        .collect();

    let project = root.join("target").join("readme-check");
    let src = project.join("src");
    let bins = src.join("bin");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&bins).expect("create the project");
    let mut fragments = String::from(FRAGMENT_CONTEXT);
    let mut programs = 0;
    for block in blocks.iter().filter(|block| is_rust(block)) {
        let origin = format!("// README.md line {}\n", block.line);
        if block.text.contains("fn main") {
            programs += 1;
            let file = bins.join(format!("line_{}.rs", block.line));
            std::fs::write(file, origin + &block.text).expect("write a program");
        } else {
            fragments.push_str(&format!(
                "\n{origin}async fn line_{}({FRAGMENT_PARAMETERS}) -> Result<(), Box<dyn std::error::Error>> {{\n{}    Ok(())\n}}\n",
                block.line, block.text
            ));
        }
    }
    assert!(programs >= 2, "the README's whole programs were not found");
    std::fs::write(src.join("lib.rs"), fragments).expect("write the fragments");
    let manifest = format!(
        "[package]\nname = \"readme-check\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n{}\n[workspace]\n",
        dependencies(&blocks, &root, &features)
    );
    std::fs::write(project.join("Cargo.toml"), manifest).expect("write Cargo.toml");
    // The workspace's lock file: the same versions, nothing to resolve.
    std::fs::copy(root.join("Cargo.lock"), project.join("Cargo.lock")).expect("copy Cargo.lock");

    let output = Command::new(env!("CARGO"))
        .args(["check", "--offline", "--quiet", "--bins", "--lib"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", project.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "a README block does not compile (see target/readme-check):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn fragments_and_features_are_found() {
    let readme = "text\n```toml\n[dependencies]\nsoloist = \"0.1\"\n```\n```rust\nlet a = 1;\n```\n```rust,ignore\nnope\n```\n```toml\nsoloist = { version = \"0.1\", features = [\"tls-rustls\", \"cluster\"] }\n```\n";
    let found = blocks(readme);
    assert_eq!(found.len(), 4);
    assert_eq!(found.iter().filter(|block| is_rust(block)).count(), 1);
    assert_eq!(found[1].line, 6);
    assert_eq!(
        quoted_features("{ version = \"0.1\", features = [\"tls-rustls\", \"cluster\"] }"),
        ["tls-rustls", "cluster"]
    );
    let deps = dependencies(&found, Path::new("/x"), &["sentinel".to_owned()]);
    assert!(
        deps.contains("soloist = { path = \"/x\", features = [\"sentinel\"] }"),
        "{deps}"
    );
}
