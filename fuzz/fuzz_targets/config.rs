//! Experiment configs with `--set` overrides: the input is the TOML text, then each override
//! after a NUL byte. Parsing validates; a valid config must also give a model config and TOML.
#![no_main]

use std::path::Path;

use clip_train::config::ExperimentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let mut parts = input.split('\0');
    let text = parts.next().unwrap_or("");
    let overrides: Vec<String> = parts.map(String::from).collect();
    let path = Path::new("/nonexistent/clip-fuzz/config.toml");
    if let Ok(config) = ExperimentConfig::parse(text, path, &overrides) {
        let _ = config.clip_config();
        let _ = config.to_toml();
    }
});
