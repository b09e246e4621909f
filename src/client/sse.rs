//! Incremental parser for Server-Sent Events as OpenAI-compatible servers stream them.
//!
//! Follows the WHATWG event-stream rules that matter here: events end at a blank line; `data:`
//! lines of one event are joined with `\n`; one optional space after the colon is dropped;
//! comment lines (`:` first) and other fields (`event:`, `id:`, `retry:`) are ignored; line
//! ends may be `\n`, `\r\n` or `\r`. Bytes can arrive split anywhere, even inside a UTF-8
//! character, so the parser buffers raw bytes until a line is complete.

/// One complete event's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The `data` payload (normally one JSON object).
    Data(String),
    /// `data: [DONE]`, OpenAI's end-of-stream marker.
    Done,
}

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("malformed SSE: an event's data is not valid UTF-8")]
    NotUtf8,
}

#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<Vec<u8>>,
    /// The previous byte was `\r`: a following `\n` belongs to the same line end.
    after_cr: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.end_line(&line)? {
                        events.push(ev);
                    }
                }
                _ => self.line.push(b),
            }
        }
        Ok(events)
    }

    /// True when bytes of an unfinished event are buffered (a stream that ends here was cut).
    pub fn has_partial_event(&self) -> bool {
        !self.line.is_empty() || self.data.is_some()
    }

    fn end_line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            return match self.data.take() {
                None => Ok(None),
                Some(data) => {
                    let text = String::from_utf8(data).map_err(|_| SseError::NotUtf8)?;
                    Ok(Some(if text.trim() == "[DONE]" {
                        SseEvent::Done
                    } else {
                        SseEvent::Data(text)
                    }))
                }
            };
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            let data = self.data.get_or_insert_with(Vec::new);
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(value);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c).unwrap());
        }
        assert!(!p.has_partial_event());
        out
    }

    #[test]
    fn events_split_anywhere_give_the_same_result() {
        let stream = "data: {\"a\":1}\n\n: keep-alive\n\ndata:{\"b\":\"é\"}\r\n\r\nevent: x\ndata: l1\ndata: l2\n\ndata: [DONE]\n\n";
        let want = vec![
            SseEvent::Data("{\"a\":1}".into()),
            SseEvent::Data("{\"b\":\"é\"}".into()),
            SseEvent::Data("l1\nl2".into()),
            SseEvent::Done,
        ];
        assert_eq!(all(&[stream.as_bytes()]), want);
        let bytes = stream.as_bytes();
        for cut in 1..bytes.len() {
            assert_eq!(all(&[&bytes[..cut], &bytes[cut..]]), want, "cut at {cut}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(all(&singles), want);
    }

    #[test]
    fn cut_stream_is_detected() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: {\"a\"").unwrap().is_empty());
        assert!(p.has_partial_event());
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut p = SseParser::new();
        assert_eq!(p.push(b"data: \xff\n\n"), Err(SseError::NotUtf8));
    }
}
