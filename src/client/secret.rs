//! The API key must never reach a report, a CSV, a journal or the terminal: a server may echo
//! the `Authorization` header in an error body. Every served string passes through one
//! [`Scrubber`] where it enters vlmbench's output.

/// Replaces every occurrence of the API key with `***`.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    key: Option<String>,
}

impl Scrubber {
    /// A scrubber for `key` (none, or an empty key, scrubs nothing).
    pub fn new(key: Option<&str>) -> Self {
        Self {
            key: key.filter(|k| !k.is_empty()).map(str::to_owned),
        }
    }

    /// `s` with the key replaced.
    pub fn scrub(&self, s: &str) -> String {
        match &self.key {
            Some(k) if s.contains(k.as_str()) => s.replace(k.as_str(), "***"),
            _ => s.to_owned(),
        }
    }

    /// Scrubs in place.
    pub fn scrub_in(&self, s: &mut String) {
        if let Some(k) = &self.key {
            if s.contains(k.as_str()) {
                *s = s.replace(k.as_str(), "***");
            }
        }
    }

    /// Scrubs every string (keys included) of a JSON value in place.
    pub fn scrub_json(&self, v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::String(s) => self.scrub_in(s),
            Value::Array(a) => a.iter_mut().for_each(|x| self.scrub_json(x)),
            Value::Object(o) => {
                let taken = std::mem::take(o);
                for (k, mut x) in taken {
                    self.scrub_json(&mut x);
                    o.insert(self.scrub(&k), x);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_replaced_everywhere() {
        let s = Scrubber::new(Some("sk-abc"));
        assert_eq!(
            s.scrub("HTTP 401: bad header Bearer sk-abc (sk-abc)"),
            "HTTP 401: bad header Bearer *** (***)"
        );
        let mut v = serde_json::json!({"echo": ["Bearer sk-abc"], "sk-abc": 1});
        s.scrub_json(&mut v);
        assert!(!v.to_string().contains("sk-abc"), "{v}");
        assert_eq!(Scrubber::new(Some("")).scrub("x"), "x");
        assert_eq!(Scrubber::new(None).scrub("sk-abc"), "sk-abc");
    }
}
