//! `cargo fuzz run page_token`: see `synckairos_fuzz::page_token` (fuzz/src/lib.rs) for
//! what the bytes are read as and what is checked; docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| synckairos_fuzz::page_token(data));
