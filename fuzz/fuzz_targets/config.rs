//! `Config::from_toml_str` on arbitrary UTF-8: never panics, and an error names at least one
//! problem by a non-empty key.
#![no_main]

use std::sync::OnceLock;

use hookrelay::config::{Config, ConfigError, LoadContext};
use libfuzzer_sys::fuzz_target;

fn context() -> &'static LoadContext {
    static CONTEXT: OnceLock<LoadContext> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let dir = std::env::temp_dir().join("hookrelay-fuzz-config");
        std::fs::create_dir_all(&dir).expect("a scratch dir");
        std::fs::write(dir.join("secret"), "s3cret\n").expect("a secret file");
        LoadContext {
            file: dir.join("config.toml"),
            base_dir: dir,
            credentials_dir: None,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text, context()) {
        Ok(_) => {}
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(problems.iter().any(|p| !p.key.is_empty()), "{problems:?}");
        }
        Err(ConfigError::Read { .. }) => panic!("a read error from text"),
    }
});
