//! Docker's word processing for Dockerfile arguments: quote removal, escapes and
//! `$VAR` / `${VAR}` / `${VAR:-x}` / `${VAR:+x}` substitution.
//!
//! Written by hand because the rules are Docker's own (not POSIX sh): the escape
//! character is configurable, single quotes suppress expansion, and unknown
//! variables expand to the empty string. `shell-words` and similar crates follow
//! POSIX and would expand or split differently.

use std::collections::HashMap;

/// Why a word could not be processed; the caller adds the file and line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LexError {
    #[error("unterminated quote in {0:?}")]
    UnterminatedQuote(String),
    #[error("unterminated ${{...}} in {0:?}")]
    UnterminatedBrace(String),
    #[error("bad substitution {0:?}")]
    BadSubstitution(String),
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

/// A variable lookup: the environment in effect at one instruction.
pub trait Vars {
    fn get(&self, name: &str) -> Option<&str>;
}

impl Vars for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl Vars for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        // Later entries win, as with repeated ENV.
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    pub escape: char,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer { escape: '\\' }
    }
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Lexer { escape }
    }

    /// Expands one word: quotes removed, escapes applied, variables substituted.
    pub fn process_word(&self, word: &str, vars: &dyn Vars) -> Result<String, LexError> {
        let mut words = self.process(word, vars, false)?;
        Ok(words.pop().unwrap_or_default())
    }

    /// Splits on unquoted whitespace, then expands each word (Docker's `ProcessWords`).
    pub fn process_words(&self, text: &str, vars: &dyn Vars) -> Result<Vec<String>, LexError> {
        self.process(text, vars, true)
    }

    /// Splits on unquoted whitespace keeping quotes and `$` untouched, so that a word
    /// can be expanded later, once the environment at its instruction is known.
    pub fn split_raw(&self, text: &str) -> Result<Vec<String>, LexError> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        let mut quote: Option<char> = None;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some(q) => {
                    cur.push(c);
                    if c == self.escape && q == '"' {
                        if let Some(n) = chars.next() {
                            cur.push(n);
                        }
                    } else if c == q {
                        quote = None;
                    }
                }
                None => {
                    if c.is_whitespace() {
                        if in_word {
                            out.push(std::mem::take(&mut cur));
                            in_word = false;
                        }
                        continue;
                    }
                    in_word = true;
                    cur.push(c);
                    if c == self.escape {
                        if let Some(n) = chars.next() {
                            cur.push(n);
                        }
                    } else if c == '"' || c == '\'' {
                        quote = Some(c);
                    }
                }
            }
        }
        if quote.is_some() {
            return Err(LexError::UnterminatedQuote(text.to_string()));
        }
        if in_word {
            out.push(cur);
        }
        Ok(out)
    }

    fn process(&self, text: &str, vars: &dyn Vars, split: bool) -> Result<Vec<String>, LexError> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut cur = String::new();
        // A word exists once anything (even an empty pair of quotes) was seen.
        let mut has_word = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if split && c.is_whitespace() {
                if has_word {
                    out.push(std::mem::take(&mut cur));
                    has_word = false;
                }
                i += 1;
                continue;
            }
            has_word = true;
            if c == self.escape {
                if let Some(&n) = chars.get(i + 1) {
                    cur.push(n);
                    i += 2;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else if c == '\'' {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .ok_or_else(|| LexError::UnterminatedQuote(text.to_string()))?;
                cur.extend(&chars[i + 1..i + 1 + end]);
                i += end + 2;
            } else if c == '"' {
                i += 1;
                loop {
                    let Some(&d) = chars.get(i) else {
                        return Err(LexError::UnterminatedQuote(text.to_string()));
                    };
                    if d == '"' {
                        i += 1;
                        break;
                    }
                    if d == self.escape {
                        // Inside double quotes the escape only protects these.
                        match chars.get(i + 1) {
                            Some(&n) if n == '"' || n == '$' || n == self.escape => {
                                cur.push(n);
                                i += 2;
                            }
                            _ => {
                                cur.push(d);
                                i += 1;
                            }
                        }
                    } else if d == '$' {
                        i = self.expand(&chars, i, vars, &mut cur, text)?;
                    } else {
                        cur.push(d);
                        i += 1;
                    }
                }
            } else if c == '$' {
                i = self.expand(&chars, i, vars, &mut cur, text)?;
            } else {
                cur.push(c);
                i += 1;
            }
        }
        if has_word || !split {
            out.push(cur);
        }
        Ok(out)
    }

    /// Expands the variable reference starting at `chars[i] == '$'`; returns the
    /// index after it.
    fn expand(
        &self,
        chars: &[char],
        i: usize,
        vars: &dyn Vars,
        cur: &mut String,
        text: &str,
    ) -> Result<usize, LexError> {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        match chars.get(i + 1) {
            Some('{') => {
                let mut j = i + 2;
                let start = j;
                while j < chars.len() && is_name(chars[j]) {
                    j += 1;
                }
                let name: String = chars[start..j].iter().collect();
                if name.is_empty() {
                    return Err(LexError::BadSubstitution(text.to_string()));
                }
                match chars.get(j) {
                    Some('}') => {
                        cur.push_str(vars.get(&name).unwrap_or(""));
                        Ok(j + 1)
                    }
                    Some(&m) if m == ':' || m == '-' || m == '+' || m == '?' => {
                        let colon = m == ':';
                        let op_at = if colon { j + 1 } else { j };
                        let op = *chars
                            .get(op_at)
                            .ok_or_else(|| LexError::UnterminatedBrace(text.to_string()))?;
                        if !matches!(op, '-' | '+' | '?') {
                            return Err(LexError::BadSubstitution(text.to_string()));
                        }
                        // The word runs to the matching brace; it may itself hold
                        // references, which are expanded.
                        let mut depth = 1;
                        let mut k = op_at + 1;
                        let wstart = k;
                        while k < chars.len() {
                            if chars[k] == self.escape {
                                k += 2;
                                continue;
                            }
                            if chars[k] == '{' {
                                depth += 1;
                            } else if chars[k] == '}' {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            k += 1;
                        }
                        if k >= chars.len() {
                            return Err(LexError::UnterminatedBrace(text.to_string()));
                        }
                        let raw_word: String = chars[wstart..k].iter().collect();
                        let word = self.process_word(&raw_word, vars)?;
                        let val = vars.get(&name);
                        let set = if colon {
                            val.is_some_and(|v| !v.is_empty())
                        } else {
                            val.is_some()
                        };
                        match op {
                            '-' => cur.push_str(if set { val.unwrap_or("") } else { &word }),
                            '+' => {
                                if set {
                                    cur.push_str(&word)
                                }
                            }
                            _ => {
                                if !set {
                                    return Err(LexError::Required {
                                        name,
                                        message: if word.is_empty() {
                                            "is not set".into()
                                        } else {
                                            word
                                        },
                                    });
                                }
                                cur.push_str(val.unwrap_or(""));
                            }
                        }
                        Ok(k + 1)
                    }
                    Some(_) => Err(LexError::BadSubstitution(text.to_string())),
                    None => Err(LexError::UnterminatedBrace(text.to_string())),
                }
            }
            Some(&c) if is_name(c) => {
                let mut j = i + 1;
                while j < chars.len() && is_name(chars[j]) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                cur.push_str(vars.get(&name).unwrap_or(""));
                Ok(j)
            }
            _ => {
                cur.push('$');
                Ok(i + 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        vec![
            ("A".into(), "alpha".into()),
            ("E".into(), "".into()),
            ("S".into(), "x y".into()),
        ]
    }

    #[test]
    fn substitution_forms() {
        let l = Lexer::default();
        let e = env();
        assert_eq!(l.process_word("$A/${A}", &e).unwrap(), "alpha/alpha");
        assert_eq!(l.process_word("${N:-def}", &e).unwrap(), "def");
        assert_eq!(l.process_word("${E:-def}", &e).unwrap(), "def");
        assert_eq!(l.process_word("${E-def}", &e).unwrap(), "");
        assert_eq!(l.process_word("${A:+set}", &e).unwrap(), "set");
        assert_eq!(l.process_word("${N:+set}", &e).unwrap(), "");
        assert_eq!(l.process_word("${N:-$A}", &e).unwrap(), "alpha");
        assert_eq!(l.process_word("'$A'", &e).unwrap(), "$A");
        assert_eq!(l.process_word("\"$A b\"", &e).unwrap(), "alpha b");
        assert_eq!(l.process_word("\\$A", &e).unwrap(), "$A");
        assert_eq!(l.process_word("$", &e).unwrap(), "$");
        assert!(l.process_word("${N:?must be set}", &e).is_err());
        assert!(l.process_word("${A", &e).is_err());
        assert!(l.process_word("\"abc", &e).is_err());
    }

    #[test]
    fn words_split_on_unquoted_space_only() {
        let l = Lexer::default();
        let e = env();
        assert_eq!(
            l.process_words("a \"b c\" 'd e' $A", &e).unwrap(),
            vec!["a", "b c", "d e", "alpha"]
        );
        assert_eq!(
            l.split_raw("k=\"v 1\" k2='$x y'").unwrap(),
            vec!["k=\"v 1\"", "k2='$x y'"]
        );
    }

    #[test]
    fn backtick_escape() {
        let l = Lexer::new('`');
        let e = env();
        assert_eq!(l.process_word("C:\\dir`$A", &e).unwrap(), "C:\\dir$A");
    }
}
