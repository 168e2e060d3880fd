//! Where API keys and endpoint overrides come from: the process environment,
//! or an explicit map with the same names (tests, embedding programs).
//!
//! Both go through [`Env::var`], so the code that reads `TOGETHER_API_KEY` or
//! `OPENAI_BASE_URL` is the same whichever source is used.

use std::collections::BTreeMap;
use std::fmt;

use super::error::{ProviderError, Result};
use crate::net::secret::ApiKey;

/// A source of environment variables.
#[derive(Clone, Default)]
pub enum Env {
    /// The process environment, read when a value is needed.
    #[default]
    Process,
    /// A fixed set of variables; nothing else is visible.
    Vars(BTreeMap<String, String>),
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Env::Process
    }

    /// A fixed set of variables.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Env::Vars(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The value of `name`, if set and not empty.
    pub fn var(&self, name: &str) -> Option<String> {
        let value = match self {
            Env::Process => std::env::var(name).ok(),
            Env::Vars(vars) => vars.get(name).cloned(),
        }?;
        let value = value.trim().to_string();
        (!value.is_empty()).then_some(value)
    }

    /// The API key in `name`; an error naming the variable when it is unset.
    pub fn api_key(&self, provider: &str, name: &str) -> Result<ApiKey> {
        self.var(name)
            .and_then(ApiKey::new)
            .ok_or_else(|| ProviderError::MissingKey {
                provider: provider.to_string(),
                var: name.to_string(),
            })
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Env::Process => f.write_str("Env::Process"),
            Env::Vars(vars) => {
                let names: Vec<&String> = vars.keys().collect();
                write!(f, "Env::Vars(names: {names:?}, values redacted)")
            }
        }
    }
}

/// The first non-empty of: an explicit value, the environment variable, the default.
pub(crate) fn resolve_base_url(
    explicit: Option<&str>,
    env: &Env,
    env_var: &str,
    default: &str,
) -> String {
    let url = explicit
        .map(str::to_string)
        .filter(|u| !u.trim().is_empty())
        .or_else(|| env.var(env_var))
        .unwrap_or_else(|| default.to_string());
    url.trim().trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_then_env_then_default() {
        let env = Env::from_pairs([("X_BASE_URL", "http://127.0.0.1:9/v1/")]);
        assert_eq!(
            resolve_base_url(Some("http://a/v1"), &env, "X_BASE_URL", "http://d"),
            "http://a/v1"
        );
        assert_eq!(
            resolve_base_url(None, &env, "X_BASE_URL", "http://d"),
            "http://127.0.0.1:9/v1"
        );
        assert_eq!(
            resolve_base_url(None, &env, "Y_BASE_URL", "http://d/"),
            "http://d"
        );
    }

    #[test]
    fn debug_shows_names_not_values() {
        let env = Env::from_pairs([("OPENAI_API_KEY", "sk-secret")]);
        let shown = format!("{env:?}");
        assert!(shown.contains("OPENAI_API_KEY"));
        assert!(!shown.contains("sk-secret"));
        assert!(matches!(
            env.api_key("openai", "TOGETHER_API_KEY"),
            Err(ProviderError::MissingKey { .. })
        ));
    }
}
