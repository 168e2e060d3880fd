//! When to retry a request, and how long to wait first, as the Stainless-generated clients
//! (openai-python and anthropic-sdk-python `_base_client.py`: `_should_retry`,
//! `_calculate_retry_timeout`) and together-python `abstract/api_requestor.py` do: retry 408, 409,
//! 429 and 5xx, obey `x-should-retry`, honour `retry-after-ms`, then `retry-after` (seconds or an
//! HTTP date), and otherwise back off exponentially with jitter (docs/providers.md, "Chat
//! clients").

use std::time::{Duration, SystemTime};

/// How many times to retry and how long to wait between attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff; doubled at each retry.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// The longest server-requested wait we obey; a longer one ends the retries.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Give up and report the error.
    GiveUp,
}

/// Whether an HTTP status is worth retrying, given the reply's headers and body.
///
/// `insufficient_quota` (OpenAI's 429 for an empty balance) is never retried:
/// waiting does not add credit.
pub fn status_is_retryable(
    status: u16,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> bool {
    match header("x-should-retry").as_deref() {
        Some("true") => return true,
        Some("false") => return false,
        _ => {}
    }
    if status == 429 && body_mentions_insufficient_quota(body) {
        return false;
    }
    matches!(status, 408 | 409 | 429) || status >= 500
}

fn body_mentions_insufficient_quota(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let error = value.get("error").unwrap_or(&value);
    ["code", "type"]
        .iter()
        .any(|field| error.get(*field).and_then(|v| v.as_str()) == Some("insufficient_quota"))
}

/// The server-requested wait: `retry-after-ms`, else `retry-after` in seconds or as an HTTP date.
pub fn parse_retry_after(
    header: &dyn Fn(&str) -> Option<String>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let value = header("retry-after")?;
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The exponential backoff before retry number `retry` (0-based), with `jitter` in [0, 1).
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let factor = 2f64.powi(retry.min(30) as i32);
        let base =
            (self.initial_backoff.as_secs_f64() * factor).min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(base * (1.0 - 0.25 * jitter.clamp(0.0, 1.0)))
    }

    /// The verdict after attempt `retry` (0-based) failed; `server_wait` is the parsed
    /// `retry-after`, if any.
    pub fn verdict(
        &self,
        retry: u32,
        retryable: bool,
        server_wait: Option<Duration>,
        jitter: f64,
    ) -> Verdict {
        if !retryable || retry >= self.max_retries {
            return Verdict::GiveUp;
        }
        match server_wait {
            Some(wait) if wait > self.max_retry_after => Verdict::GiveUp,
            Some(wait) if wait > Duration::ZERO => Verdict::RetryAfter(wait),
            _ => Verdict::RetryAfter(self.backoff(retry, jitter)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn retryable_statuses_follow_the_sdks() {
        let none = headers(&[]);
        for status in [408, 409, 429, 500, 502, 503, 529] {
            assert!(status_is_retryable(status, &none, b"{}"), "{status}");
        }
        for status in [400, 401, 403, 404, 422] {
            assert!(!status_is_retryable(status, &none, b"{}"), "{status}");
        }
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(!status_is_retryable(429, &none, quota));
        assert!(!status_is_retryable(
            500,
            &headers(&[("x-should-retry", "false")]),
            b""
        ));
        assert!(status_is_retryable(
            400,
            &headers(&[("x-should-retry", "true")]),
            b""
        ));
    }

    #[test]
    fn retry_after_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after(
                &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", &later)]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "soon")]), now),
            None
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below_a_quarter() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(0, 0.0), Duration::from_millis(500));
        assert_eq!(policy.backoff(2, 0.0), Duration::from_secs(2));
        assert_eq!(policy.backoff(10, 0.0), Duration::from_secs(8));
        assert_eq!(policy.backoff(0, 1.0), Duration::from_millis(375));
    }

    #[test]
    fn verdicts() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.verdict(0, false, None, 0.0), Verdict::GiveUp);
        assert_eq!(policy.verdict(2, true, None, 0.0), Verdict::GiveUp);
        assert_eq!(
            policy.verdict(0, true, Some(Duration::from_secs(3)), 0.0),
            Verdict::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(
            policy.verdict(0, true, Some(Duration::from_secs(600)), 0.0),
            Verdict::GiveUp
        );
        assert_eq!(
            policy.verdict(1, true, Some(Duration::ZERO), 0.0),
            Verdict::RetryAfter(Duration::from_secs(1))
        );
    }
}
