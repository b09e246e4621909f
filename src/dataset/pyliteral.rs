//! Parser for the Python list-of-strings literals VLMEvalKit stores in TSV cells, e.g. COCO's
//! reference captions: `['A man riding a horse.', "It's a sunny day."]`.
//!
//! Accepts exactly what `ast.literal_eval` would for a list of plain string literals: single or
//! double quotes, the escapes `\\ \' \" \n \t \r \a \b \f \v \0 \xNN \uNNNN \UNNNNNNNN` and
//! backslash-newline, adjacent-literal concatenation, and a trailing comma. Anything else is an
//! error that says where.

/// Parses `[ 'a', "b" ]` into its strings.
pub fn parse_str_list(src: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut p = Parser { c: &chars, i: 0 };
    p.ws();
    p.expect('[')?;
    let mut out = Vec::new();
    loop {
        p.ws();
        if p.peek() == Some(']') {
            p.i += 1;
            break;
        }
        let mut s = p.string()?;
        // Python concatenates adjacent literals: 'a' 'b' == 'ab'.
        loop {
            p.ws();
            match p.peek() {
                Some('\'') | Some('"') => s.push_str(&p.string()?),
                _ => break,
            }
        }
        out.push(s);
        match p.peek() {
            Some(',') => p.i += 1,
            Some(']') => {
                p.i += 1;
                break;
            }
            Some(c) => {
                return Err(format!(
                    "expected ',' or ']' at character {}, found {c:?}",
                    p.i
                ))
            }
            None => return Err("unterminated list (missing ']')".into()),
        }
    }
    p.ws();
    if p.i != chars.len() {
        return Err(format!(
            "unexpected text after the list at character {}",
            p.i
        ));
    }
    Ok(out)
}

struct Parser<'a> {
    c: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }
    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.i += 1;
        }
    }
    fn expect(&mut self, ch: char) -> Result<(), String> {
        if self.peek() == Some(ch) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {ch:?} at character {}", self.i))
        }
    }
    fn hex(&mut self, n: usize) -> Result<char, String> {
        let start = self.i;
        let digits: String = self
            .c
            .get(start..start + n)
            .ok_or("truncated escape")?
            .iter()
            .collect();
        self.i += n;
        u32::from_str_radix(&digits, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| format!("invalid escape digits {digits:?} at character {start}"))
    }
    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            other => {
                return Err(format!(
                    "expected a quoted string at character {}, found {other:?}",
                    self.i
                ))
            }
        };
        self.i += 1;
        let mut s = String::new();
        loop {
            let Some(ch) = self.peek() else {
                return Err("unterminated string".into());
            };
            self.i += 1;
            if ch == quote {
                return Ok(s);
            }
            if ch != '\\' {
                s.push(ch);
                continue;
            }
            let Some(e) = self.peek() else {
                return Err("unterminated escape".into());
            };
            self.i += 1;
            match e {
                '\\' | '\'' | '"' => s.push(e),
                'n' => s.push('\n'),
                't' => s.push('\t'),
                'r' => s.push('\r'),
                'a' => s.push('\x07'),
                'b' => s.push('\x08'),
                'f' => s.push('\x0c'),
                'v' => s.push('\x0b'),
                '0' => s.push('\0'),
                '\n' => {}
                'x' => s.push(self.hex(2)?),
                'u' => s.push(self.hex(4)?),
                'U' => s.push(self.hex(8)?),
                // Python keeps unknown escapes literally (with a warning).
                other => {
                    s.push('\\');
                    s.push(other);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals() {
        assert_eq!(
            parse_str_list(r#"['A man.', "It's here", 'say \"hi\"', 'caf\xe9 \u00e9\n']"#).unwrap(),
            vec!["A man.", "It's here", "say \"hi\"", "café é\n"]
        );
        assert_eq!(parse_str_list(" [ ] ").unwrap(), Vec::<String>::new());
        assert_eq!(parse_str_list("['a' 'b', 'c',]").unwrap(), vec!["ab", "c"]);
        assert_eq!(parse_str_list(r"['it\'s']").unwrap(), vec!["it's"]);
    }

    #[test]
    fn errors_say_where() {
        assert!(parse_str_list("['a'").unwrap_err().contains("missing ']'"));
        assert!(parse_str_list("['a', 3]")
            .unwrap_err()
            .contains("quoted string"));
        assert!(parse_str_list("'a'").unwrap_err().contains("'['"));
        assert!(parse_str_list("['a'] x")
            .unwrap_err()
            .contains("after the list"));
    }
}
