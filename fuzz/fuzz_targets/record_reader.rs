//! Any bytes as a record file: the reader must return a recording or an error, never panic,
//! and never allocate beyond its chunk limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = llmdd::record::parse(std::path::Path::new("fuzz.rec"), data, &mut |_, _| {});
});
