//! Any text as `llmdd.toml`: parsing and applying it must give settings or an error with a
//! line, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.toml");
    if let Ok(cfg) = llmdd::config_file::parse(path, text) {
        let mut run = llmdd::cli::RunArgs::defaults();
        let _ = llmdd::config_file::apply_run(&cfg, path, &mut run, &|_| false);
        let _ = llmdd::config_file::engine_config(&cfg, path, &[]);
    }
});
