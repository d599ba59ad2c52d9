//! Any bytes as a client's chunked request body on the native HTTP/1.1 path, arriving in two
//! reads: the reader never panics, never sees an end in a part that the whole does not agree
//! with, and the body it forwards has exactly the length it announces upstream.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let split = rest.len() * control as usize / 256;
    let _ = nrdot_proxy::request_chunked_parse(rest, split);
});
