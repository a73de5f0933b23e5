//! A snapshot file as `PUT /snapshot/load` and `--restore` read it: framing (magic, version,
//! length, CRC-64), then the JSON contents and their consistency. Inputs are wrapped in a valid
//! frame half of the time, so the fuzzer reaches the contents past the checksum.
#![no_main]

use std::path::Path;

use ember::snapshot::{format, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.snap");
    let _ = parse(path, data);
    if let Some((&first, body)) = data.split_first()
        && first & 1 == 1
    {
        let _ = parse(path, &format::encode(body));
    }
});
