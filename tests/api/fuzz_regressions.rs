//! The fuzz targets' findings, replayed in the normal suite: every input
//! kept in `fuzz/regressions/<target>/` (each one crashed the target once)
//! and the committed corpus `fuzz/corpus/<target>/` go through the same
//! harness function that `cargo fuzz run <target>` calls (fuzz/src/lib.rs,
//! included here as a module), so a crash found once stays fixed and the
//! corpus keeps passing in a plain `cargo test`. No server: the harnesses
//! drive the library directly. docs/fuzzing.md.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

/// Runs `run` on every file of `fuzz/<folder>/<target>/`; fails naming each
/// file that panicked. Returns how many files ran.
fn replay(folder: &str, target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(folder)
        .join(target);
    if !dir.exists() {
        // Git keeps no empty folder: a target without regressions has none.
        return 0;
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    let mut failed = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).expect("a readable input");
        if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that panic:\n{}",
        failed.join("\n")
    );
    files.len()
}

fn replay_target(target: &str, run: fn(&[u8]), regressions: usize) {
    assert_eq!(
        replay("regressions", target, run),
        regressions,
        "fuzz/regressions/{target} holds another number of inputs than this test says"
    );
    assert!(replay("corpus", target, run) > 0, "no corpus for {target}");
}

#[test]
fn request_path_regressions_and_corpus_pass() {
    replay_target("request_path", harness::request_path, 0);
}

#[test]
fn stored_session_regressions_and_corpus_pass() {
    replay_target("stored_session", harness::stored_session, 1);
}

#[test]
fn page_token_regressions_and_corpus_pass() {
    replay_target("page_token", harness::page_token, 1);
}
