//! The pieces of HTTP that every network client shares, kept below every layer that makes
//! requests: when and how long to retry ([`retry`]), keys that are never printed ([`secret`]),
//! and URL helpers ([`url`]). The hosted providers' transport (`providers::http`) and the
//! Hugging Face Hub downloads (`hub`) are both built on these and on `ureq`.

pub mod retry;
pub mod secret;
pub mod url;

/// A reply's headers as (lower-cased name, value) pairs; values that are not text are left out.
pub fn lowercase_headers(headers: &ureq::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_ascii_lowercase(),
                v.to_str().ok()?.to_string(),
            ))
        })
        .collect()
}
