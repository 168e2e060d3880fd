//! URL helpers every client shares: the part of a URL that is safe to show, and where a
//! redirect's `Location` points.

/// The path (and query) of a URL: what logs and errors show instead of the whole URL,
/// which may carry credentials in its authority or a presigned signature.
pub fn display_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let path = after_scheme
        .find('/')
        .map(|i| &after_scheme[i..])
        .unwrap_or("/");
    path.split('?').next().unwrap_or(path).to_string()
}

/// An absolute URL for a `Location` header, which may be relative to `base`.
pub fn resolve_location(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let authority = rest.split('/').next().unwrap_or(rest);
    if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or(base);
        format!("{dir}/{location}")
    }
}

/// `scheme://authority` of a URL, lower-cased: two URLs with the same origin are the same
/// server, which may see the same credentials.
pub fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    // Credentials in the authority are not part of the server's name.
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    )
}

/// Percent-encodes `text` for a URL path: every byte but RFC 3986's unreserved characters,
/// and `/` too unless `keep_slash` (a file path keeps its folders; a revision such as
/// `refs/pr/1` is one segment).
pub fn encode_path(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_hide_authority_and_query() {
        assert_eq!(
            display_path("https://user:pw@api.x.com/v1/files?sig=abc"),
            "/v1/files"
        );
        assert_eq!(display_path("http://127.0.0.1:80"), "/");
    }

    #[test]
    fn locations() {
        assert_eq!(
            resolve_location("http://h:1/v1/files", "https://s3/x?y"),
            "https://s3/x?y"
        );
        assert_eq!(
            resolve_location("http://h:1/v1/files", "/up/1"),
            "http://h:1/up/1"
        );
    }

    #[test]
    fn origins_and_encoded_paths() {
        assert_eq!(
            origin("HTTP://Hub.example:8080/org/m?x"),
            "http://hub.example:8080"
        );
        assert_eq!(origin("https://u:p@cdn.x/a"), "https://cdn.x");
        assert_eq!(encode_path("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(
            encode_path("sub/model 1.safetensors", true),
            "sub/model%201.safetensors"
        );
    }
}
