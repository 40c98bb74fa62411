//! `cargo fuzz run stored_session`: see `synckairos_fuzz::stored_session` (fuzz/src/lib.rs) for
//! what the bytes are read as and what is checked; docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| synckairos_fuzz::stored_session(data));
