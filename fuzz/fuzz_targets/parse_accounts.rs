//! `parse_accounts` on arbitrary bytes: never panics; a listed result has no duplicates.
#![no_main]

use hookrelay::ingest::{Accounts, parse_accounts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Accounts::Listed(accounts) = parse_accounts(data) {
        for (i, a) in accounts.iter().enumerate() {
            assert!(!accounts[..i].contains(a), "duplicate account {a:?}");
        }
    }
});
