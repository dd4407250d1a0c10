//! Sizes, durations and platforms as given on command lines: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = kiln_common::units::parse_size(s);
    let _ = kiln_common::duration::parse(s);
    let _ = kiln_common::image::Platform::parse(s);
});
