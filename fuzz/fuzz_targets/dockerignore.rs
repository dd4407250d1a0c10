//! `.dockerignore` patterns and path matching: the input is patterns, a NUL,
//! then a path; never a panic.
#![no_main]
use kiln_executor::dockerignore::DockerIgnore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (patterns, path) = text.split_once('\0').unwrap_or((text, "a/b/c"));
    let ignore = DockerIgnore::parse(patterns);
    let _ = ignore.excluded(path);
    let _ = ignore.prunes(path, || true);
    let _ = ignore.may_reinclude_under(path);
});
