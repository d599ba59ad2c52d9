//! Any bytes as an upstream's response to the native HTTP/1.1 path: the head rewrite and the
//! body framing (length, chunked with trailers, until close) never panic and never relay more
//! bytes than arrived.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let split = rest.len() * control as usize / 256;
    if let Some(n) = nrdot_proxy::relay_parse(rest, split, control & 1 == 1) {
        assert!(n <= rest.len());
    }
});
