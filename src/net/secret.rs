//! API keys as an opaque type: they can be sent in a header, and that is all.
//!
//! The key is never printed: `Debug` is redacted, there is no `Display` and no
//! `Serialize`, and [`ApiKey::scrub`] removes the key from text a server sent
//! back (some APIs echo the key they rejected).

use std::fmt;
use std::sync::Arc;

/// The text that stands in for a key wherever one would have been shown.
pub const REDACTED: &str = "[redacted]";

/// A provider's API key, read from the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// Wraps a key; `None` when it is empty or only whitespace.
    pub fn new(key: impl AsRef<str>) -> Option<Self> {
        let key = key.as_ref().trim();
        if key.is_empty() {
            None
        } else {
            Some(ApiKey(Arc::from(key)))
        }
    }

    /// The raw key, for the one place that builds the auth header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        if text.contains(self.expose()) {
            text.replace(self.expose(), REDACTED)
        } else {
            text.to_string()
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({REDACTED})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_scrub_hide_the_key() {
        let key = ApiKey::new("sk-test-123456").unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
        assert_eq!(
            key.scrub("Incorrect API key provided: sk-test-123456."),
            "Incorrect API key provided: [redacted]."
        );
        assert!(ApiKey::new("  ").is_none());
    }
}
