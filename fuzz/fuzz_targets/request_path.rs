//! `cargo fuzz run request_path`: see `synckairos_fuzz::request_path` (fuzz/src/lib.rs) for
//! what the bytes are read as and what is checked; docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| synckairos_fuzz::request_path(data));
