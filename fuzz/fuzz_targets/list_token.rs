//! `cargo fuzz run list_token`: see `synckairos_fuzz::list_token` (fuzz/src/lib.rs) for
//! what the bytes are read as and what is checked; docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| synckairos_fuzz::list_token(data));
