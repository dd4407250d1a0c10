//! How every binary prints an error: the message, then each cause in its
//! `source()` chain, `: `-separated — the `{e:#}` of anyhow without anyhow.
//!
//! The rule (CONVENTIONS.md): a message names the operation and the object;
//! the cause lives in `#[source]` and is not repeated in the text. Older
//! messages that still embed their cause are printed once, not twice: a cause
//! whose text the line already holds is skipped.

use std::error::Error;
use std::fmt;

/// `Report(&e)` displays `e` with its causes.
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut cur = self.0.source();
        while let Some(cause) = cur {
            let text = cause.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cur = cause.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}")]
    struct Outer(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}: {1}")]
    struct Repeats(&'static str, #[source] std::io::Error);

    #[test]
    fn chains_causes_once() {
        let e = Outer("/x", std::io::Error::other("disk on fire"));
        assert_eq!(Report(&e).to_string(), "reading /x: disk on fire");
        let e = Repeats("/x", std::io::Error::other("disk on fire"));
        assert_eq!(Report(&e).to_string(), "reading /x: disk on fire");
    }
}
