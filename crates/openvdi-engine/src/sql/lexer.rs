//! The T-SQL lexer: identifiers (plain, `[bracketed]`, `"quoted"`), strings
//! (`'…'` and `N'…'`, with `''` as an escaped quote), numbers, `@variables`,
//! punctuation, and comments (`-- …` and nested `/* … */`), each token with the
//! 1-based line on which it starts (lines count from the start of the batch, as
//! SQL Server reports them).

use crate::error::{msg, SqlError};

/// What a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// A plain identifier or keyword, as written.
    Word(String),
    /// A `[bracketed]` or `"quoted"` identifier (never a keyword).
    Quoted(String),
    /// A string literal; `unicode` for `N'…'`.
    Str {
        /// The value with `''` unescaped.
        value: String,
        /// Whether it was written `N'…'`.
        unicode: bool,
    },
    /// An integer literal.
    Number(u64),
    /// `@name` or `@@name`.
    Variable(String),
    /// `,`
    Comma,
    /// `=`
    Eq,
    /// `;`
    Semi,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `.`
    Dot,
    /// Any other character.
    Other(char),
}

/// A token with its line and the source text it came from (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// 1-based line within the batch.
    pub line: u32,
    /// The text as written (what "Incorrect syntax near '…'" quotes).
    pub text: String,
}

/// Split `src` into tokens.
pub fn lex(src: &str) -> Result<Vec<Token>, SqlError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1u32;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let start_line = line;
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                // T-SQL block comments nest.
                let mut depth = 0usize;
                loop {
                    if i >= chars.len() {
                        return Err(SqlError::new(113, 15, "Missing end comment mark '*/'.")
                            .at_line(start_line));
                    }
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            '\'' => {
                let (value, end, nl) = quoted(&chars, i + 1, '\'')
                    .ok_or_else(|| msg::unclosed_quote(&rest(&chars, i + 1)).at_line(line))?;
                line += nl;
                i = end;
                out.push(Token {
                    tok: Tok::Str {
                        value,
                        unicode: false,
                    },
                    line: start_line,
                    text: chars[start..i].iter().collect(),
                });
            }
            'N' | 'n' if chars.get(i + 1) == Some(&'\'') => {
                let (value, end, nl) = quoted(&chars, i + 2, '\'')
                    .ok_or_else(|| msg::unclosed_quote(&rest(&chars, i + 2)).at_line(line))?;
                line += nl;
                i = end;
                out.push(Token {
                    tok: Tok::Str {
                        value,
                        unicode: true,
                    },
                    line: start_line,
                    text: chars[start..i].iter().collect(),
                });
            }
            '"' | '[' => {
                let close = if c == '"' { '"' } else { ']' };
                let (value, end, nl) = quoted(&chars, i + 1, close)
                    .ok_or_else(|| msg::unclosed_quote(&rest(&chars, i + 1)).at_line(line))?;
                line += nl;
                i = end;
                out.push(Token {
                    tok: Tok::Quoted(value),
                    line: start_line,
                    text: chars[start..i].iter().collect(),
                });
            }
            '@' => {
                i += 1;
                while i < chars.len() && (chars[i] == '@' || is_ident_char(chars[i])) {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                out.push(Token {
                    tok: Tok::Variable(text.clone()),
                    line: start_line,
                    text,
                });
            }
            c if c.is_ascii_digit() => {
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                // An overflowing literal is still a number to the parser; clamp, and
                // let the option's range check reject it.
                let v = text.parse::<u64>().unwrap_or(u64::MAX);
                out.push(Token {
                    tok: Tok::Number(v),
                    line: start_line,
                    text,
                });
            }
            c if is_ident_start(c) => {
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                out.push(Token {
                    tok: Tok::Word(text.clone()),
                    line: start_line,
                    text,
                });
            }
            _ => {
                i += 1;
                let tok = match c {
                    ',' => Tok::Comma,
                    '=' => Tok::Eq,
                    ';' => Tok::Semi,
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '.' => Tok::Dot,
                    other => Tok::Other(other),
                };
                out.push(Token {
                    tok,
                    line: start_line,
                    text: c.to_string(),
                });
            }
        }
    }
    Ok(out)
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '#'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '#' | '$' | '@')
}

/// Read a delimited run starting at `i` (just after the opening delimiter) up to
/// `close`; a doubled `close` is an escaped one. Returns the value, the index after
/// the closing delimiter and the newlines crossed; `None` if unterminated.
fn quoted(chars: &[char], mut i: usize, close: char) -> Option<(String, usize, u32)> {
    let mut v = String::new();
    let mut nl = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == close {
            if chars.get(i + 1) == Some(&close) {
                v.push(close);
                i += 2;
                continue;
            }
            return Some((v, i + 1, nl));
        }
        if c == '\n' {
            nl += 1;
        }
        v.push(c);
        i += 1;
    }
    None
}

fn rest(chars: &[char], i: usize) -> String {
    chars[i.min(chars.len())..].iter().collect()
}

/// The largest `GO n` repeat count accepted. sqlcmd itself only requires a
/// positive integer (go-sqlcmd rejects `n < 1` and takes any `int`); here every
/// batch is a BACKUP or RESTORE that waits for a device set, so a script asking for
/// billions of runs is a typo or hostile, and running it would occupy the engine
/// practically forever. 10 000 is far beyond any real repeat use.
pub const MAX_GO_COUNT: u32 = 10_000;

/// Split a script into batches at lines that hold only `GO` (any case, optionally
/// followed by a repeat count, as sqlcmd accepts). Returns each batch with the
/// 1-based script line it starts on and how many times to run it; a count of 0 or
/// above [`MAX_GO_COUNT`] is an error (sqlcmd's "Syntax error … near command
/// 'GO'"), and nothing of the script runs.
pub fn split_batches(script: &str) -> Result<Vec<Batch>, SqlError> {
    let mut batches = Vec::new();
    let mut cur = String::new();
    let mut start = 1u32;
    for (n, l) in script.split_inclusive('\n').enumerate() {
        let t = l.trim();
        let mut words = t.split_whitespace();
        let first_is_go = words.next().is_some_and(|w| w.eq_ignore_ascii_case("go"));
        let count_word = words.next();
        let is_count = |c: &str| {
            let digits = c.strip_prefix('-').unwrap_or(c);
            !digits.is_empty() && digits.chars().all(|ch| ch.is_ascii_digit())
        };
        let is_go = first_is_go
            && match (count_word, words.next()) {
                (None, _) => true,
                (Some(c), None) => is_count(c),
                _ => false,
            };
        if is_go {
            let count = match count_word {
                None => 1,
                Some(c) => match c.parse::<u32>() {
                    Ok(k) if (1..=MAX_GO_COUNT).contains(&k) => k,
                    _ => {
                        return Err(SqlError::msg(
                            50000,
                            format!(
                                "Sqlcmd: Error: Syntax error at line {} near command 'GO'. (The repeat count '{c}' must be between 1 and {MAX_GO_COUNT}.)",
                                n + 1
                            ),
                        ))
                    }
                },
            };
            if !cur.trim().is_empty() {
                batches.push(Batch {
                    text: std::mem::take(&mut cur),
                    first_line: start,
                    count,
                });
            }
            cur.clear();
            start = n as u32 + 2;
        } else {
            cur.push_str(l);
        }
    }
    if !cur.trim().is_empty() {
        batches.push(Batch {
            text: cur,
            first_line: start,
            count: 1,
        });
    }
    Ok(batches)
}

/// One batch of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The batch's text.
    pub text: String,
    /// The script line it starts on.
    pub first_line: u32,
    /// `GO n`: how many times to run it.
    pub count: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn words_strings_and_punctuation() {
        assert_eq!(
            toks("BACKUP [my db] TO VIRTUAL_DEVICE = N'a''b', \"x y\";"),
            vec![
                Tok::Word("BACKUP".into()),
                Tok::Quoted("my db".into()),
                Tok::Word("TO".into()),
                Tok::Word("VIRTUAL_DEVICE".into()),
                Tok::Eq,
                Tok::Str {
                    value: "a'b".into(),
                    unicode: true
                },
                Tok::Comma,
                Tok::Quoted("x y".into()),
                Tok::Semi,
            ]
        );
    }

    #[test]
    fn brackets_escape_and_numbers() {
        assert_eq!(
            toks("[a]]b] 65536 @v"),
            vec![
                Tok::Quoted("a]b".into()),
                Tok::Number(65536),
                Tok::Variable("@v".into())
            ]
        );
    }

    #[test]
    fn comments_and_lines() {
        let t = lex("-- one\n/* two /* nested */\n */ BACKUP\n'x'").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].line, 3);
        assert_eq!(t[1].line, 4);
    }

    #[test]
    fn unclosed() {
        let e = lex("SELECT 'abc").unwrap_err();
        assert_eq!(e.number(), 105);
        assert_eq!(
            e.messages[0].text,
            "Unclosed quotation mark after the character string 'abc'."
        );
        assert_eq!(lex("[abc").unwrap_err().number(), 105);
        assert_eq!(lex("/* x").unwrap_err().number(), 113);
    }

    #[test]
    fn go_batches() {
        let b = split_batches("a\nGO\n\ngo 2\nb\nc\n  Go  \nGOAL\n").unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[2].text, "GOAL\n");
        assert_eq!(b[0].text, "a\n");
        assert_eq!(b[0].first_line, 1);
        assert_eq!(b[1].text, "b\nc\n");
        // `go 2` after an empty batch starts the next batch at line 5.
        assert_eq!(b[1].first_line, 5);
        let b = split_batches("x\nGO\nGOAL\n").unwrap();
        assert_eq!(b[1].text, "GOAL\n");
        assert_eq!(split_batches("x\ngo 3\n").unwrap()[0].count, 3);
    }

    #[test]
    fn go_count_is_bounded() {
        let max = format!("x\nGO {MAX_GO_COUNT}\n");
        assert_eq!(split_batches(&max).unwrap()[0].count, MAX_GO_COUNT);
        for bad in [
            format!("x\nGO {}\n", MAX_GO_COUNT + 1),
            "x\nGO 0\n".to_string(),
            "x\nGO -1\n".to_string(),
            "x\nGO 4294967295\n".to_string(),
            "x\nGO 99999999999999999999\n".to_string(),
        ] {
            let e = split_batches(&bad).unwrap_err();
            assert!(e.to_string().contains("near command 'GO'"), "{bad}: {e}");
            assert!(e.to_string().contains("line 2"), "{bad}: {e}");
        }
    }
}
