//! `X-Dropbox-Signature` verification: never panics, and accepts exactly the right HMAC in
//! either hex case. Input: [secret length][secret][header length][header][body].
#![no_main]

use hookrelay::sign::{dropbox_signature, verify_dropbox};
use libfuzzer_sys::fuzz_target;

fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let Some((&len, rest)) = data.split_first() else {
        return &[];
    };
    let (head, tail) = rest.split_at(usize::from(len).min(rest.len()));
    *data = tail;
    head
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let secret = take(&mut data);
    let header = take(&mut data);
    let body = data;
    let right = dropbox_signature(secret, body);
    assert_eq!(
        verify_dropbox(secret, body, header),
        header.eq_ignore_ascii_case(right.as_bytes())
    );
    assert!(verify_dropbox(
        secret,
        body,
        right.to_uppercase().as_bytes()
    ));
});
