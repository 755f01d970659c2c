//! Any text as config.toml: `Config::parse` returns Ok or a located error, never panics.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use snapshot_scheduler::config::{Config, LoadOptions};

fuzz_target!(|text: &str| {
    let env = BTreeMap::from([("VPS_API_TOKEN".to_owned(), "fuzz-token".to_owned())]);
    let path = Path::new("fuzz.toml");
    let _ = Config::parse(path, text, LoadOptions { simulate: true }, &env);
    // Loading the token for real reads token_file from disk: only without one.
    if !text.contains("token_file") {
        let _ = Config::parse(path, text, LoadOptions { simulate: false }, &env);
    }
});
