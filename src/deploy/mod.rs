//! Deployments of registered adapters to a running vLLM server through its runtime LoRA API
//! (`POST /v1/load_lora_adapter` with `lora_name` and `lora_path`, `POST /v1/unload_lora_adapter`
//! with `lora_name`). Every attempt is recorded in the registry, a refused one as `failed` with
//! the target's message; a rollback unloads a deployment's adapter and loads the version the
//! target served before it. Both the CLI and the server deploy through here.

use std::time::Duration;

use serde_json::json;

use crate::net::secret::ApiKey;
use crate::registry::{
    Deployment, DeploymentAction, ModelVersion, NewDeployment, Registry, RegistryError,
};

/// The environment variable holding the vLLM server's API key (its `--api-key`), if any.
pub const VLLM_API_KEY_VAR: &str = "VLLM_API_KEY";

/// How long a load or unload may take (vLLM reads the adapter from disk before it answers).
const TIMEOUT: Duration = Duration::from_secs(120);

/// At most this much of a target's error body goes into a message.
const MAX_MESSAGE: usize = 500;

/// What can go wrong in a deployment.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The target refused the call, or could not be reached; the attempt is recorded as
    /// deployment `deployment`.
    #[error("{target} refused: {message} (recorded as failed deployment {deployment})")]
    Refused {
        target: String,
        message: String,
        deployment: i64,
    },
    /// A request that cannot be deployed as asked (no adapter, bad target, nothing to roll
    /// back to).
    #[error("{0}")]
    Invalid(String),
    /// A rollback of a deployment that is not what the target serves.
    #[error("{0}")]
    Conflict(String),
}

/// One vLLM server's runtime LoRA API.
pub struct VllmClient {
    agent: ureq::Agent,
    key: Option<ApiKey>,
}

impl std::fmt::Debug for VllmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VllmClient")
            .field("key", &self.key)
            .finish()
    }
}

impl VllmClient {
    /// A client with the key from `VLLM_API_KEY`, when set.
    pub fn from_env() -> VllmClient {
        let key = std::env::var(VLLM_API_KEY_VAR).ok().and_then(ApiKey::new);
        VllmClient::new(key)
    }

    pub fn new(key: Option<ApiKey>) -> VllmClient {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(TIMEOUT))
            .build()
            .new_agent();
        VllmClient { agent, key }
    }

    /// Loads the adapter at `lora_path` under `lora_name`; `Err` holds the target's message.
    pub fn load(&self, target: &str, lora_name: &str, lora_path: &str) -> Result<(), String> {
        self.post(
            target,
            "/v1/load_lora_adapter",
            &json!({"lora_name": lora_name, "lora_path": lora_path}),
        )
    }

    /// Unloads the adapter named `lora_name`.
    pub fn unload(&self, target: &str, lora_name: &str) -> Result<(), String> {
        self.post(
            target,
            "/v1/unload_lora_adapter",
            &json!({"lora_name": lora_name}),
        )
    }

    fn post(&self, target: &str, path: &str, body: &serde_json::Value) -> Result<(), String> {
        let url = format!("{}{path}", target.trim_end_matches('/'));
        let mut req = self
            .agent
            .post(&url)
            .header("content-type", "application/json");
        if let Some(key) = &self.key {
            req = req.header("authorization", format!("Bearer {}", key.expose()));
        }
        let scrub = |text: String| match &self.key {
            Some(k) => k.scrub(&text),
            None => text,
        };
        let mut reply = req
            .send(body.to_string().as_bytes())
            .map_err(|e| scrub(format!("POST {path}: {e}")))?;
        let status = reply.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = reply
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Err(scrub(format!(
            "POST {path}: HTTP {status}: {}",
            error_message(&text)
        )))
    }
}

/// The message of a vLLM (OpenAI-style) error body, else the body's text, shortened.
fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v["message"]
            .as_str()
            .or(v["error"]["message"].as_str())
            .or(v["error"].as_str())
            .or(v["detail"].as_str())
            .map(str::to_string)
    });
    let text = message.unwrap_or_else(|| body.trim().to_string());
    let text = match text.is_empty() {
        true => "(no message)".to_string(),
        false => text,
    };
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// A deployment to make.
#[derive(Debug, Clone, Default)]
pub struct DeployRequest {
    /// The vLLM server, `http://host:port`.
    pub target: String,
    /// The name the adapter is served under (default: the model's name).
    pub lora_name: Option<String>,
    pub notes: Option<String>,
    pub who: Option<String>,
}

/// `http://` or `https://` with a host: the targets this module calls.
pub fn check_target(target: &str) -> Result<String, DeployError> {
    let trimmed = target.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(trimmed.to_string())
        }
        _ => Err(DeployError::Invalid(format!(
            "target `{target}` is not a vLLM server URL (http://HOST:PORT)"
        ))),
    }
}

/// The adapter folder of a version, which vLLM must be able to read.
fn adapter_of(v: &ModelVersion) -> Result<&str, DeployError> {
    v.adapter_path.as_deref().ok_or_else(|| {
        DeployError::Invalid(format!(
            "{}@{} has no local adapter to deploy (a provider's model: {})",
            v.name,
            v.version,
            v.remote_model.as_deref().unwrap_or("none")
        ))
    })
}

/// Loads version `v` on `req.target` and records the deployment. When the target already
/// serves this LoRA name (per the registry), that adapter is unloaded first, since vLLM
/// refuses a name it has loaded.
pub fn deploy(
    reg: &Registry,
    client: &VllmClient,
    v: &ModelVersion,
    req: &DeployRequest,
) -> Result<Deployment, DeployError> {
    let target = check_target(&req.target)?;
    let lora_name = req.lora_name.clone().unwrap_or_else(|| v.name.clone());
    if lora_name.trim().is_empty() {
        return Err(DeployError::Invalid("lora_name is empty".into()));
    }
    let path = adapter_of(v)?.to_string();
    let serving = reg
        .deployments()?
        .into_iter()
        .any(|d| d.target == target && d.lora_name == lora_name && d.status == "active");
    let unloaded = match serving {
        true => client.unload(&target, &lora_name),
        false => Ok(()),
    };
    let result = replace(unloaded, client.load(&target, &lora_name, &path));
    record(
        reg,
        v,
        &target,
        &lora_name,
        DeploymentAction::Deploy,
        req,
        result,
    )
}

/// Rolls deployment `id` back: unloads its adapter and loads the version the target served
/// under the same name before it, recorded as a `rollback`.
pub fn rollback(
    reg: &Registry,
    client: &VllmClient,
    id: i64,
    who: Option<String>,
) -> Result<Deployment, DeployError> {
    let d = reg.deployment(id)?;
    if d.status != "active" {
        return Err(DeployError::Conflict(format!(
            "deployment {id} is {}, not active: only what a target serves can be rolled back",
            d.status
        )));
    }
    let prev = reg.previous_deployment(id)?.ok_or_else(|| {
        DeployError::Conflict(format!(
            "deployment {id}: {} served no other version under `{}` before it",
            d.target, d.lora_name
        ))
    })?;
    let v = reg.model_version(&prev.model, prev.version)?;
    let path = adapter_of(&v)?.to_string();
    let unloaded = client.unload(&d.target, &d.lora_name);
    let result = replace(unloaded, client.load(&d.target, &d.lora_name, &path));
    let req = DeployRequest {
        target: d.target.clone(),
        lora_name: Some(d.lora_name.clone()),
        notes: Some(format!("rollback of deployment {id}")),
        who,
    };
    record(
        reg,
        &v,
        &d.target,
        &d.lora_name,
        DeploymentAction::Rollback,
        &req,
        result,
    )
}

/// The outcome of an unload followed by a load under the same name. A target that restarted
/// has forgotten its runtime adapters and refuses the unload; the load still decides.
fn replace(unloaded: Result<(), String>, loaded: Result<(), String>) -> Result<(), String> {
    match (unloaded, loaded) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(u), Ok(())) => {
            tracing::warn!("the unload before the load was refused: {u}");
            Ok(())
        }
        (Ok(()), Err(l)) => Err(l),
        (Err(u), Err(l)) => Err(format!("{l} (and before it, {u})")),
    }
}

fn record(
    reg: &Registry,
    v: &ModelVersion,
    target: &str,
    lora_name: &str,
    action: DeploymentAction,
    req: &DeployRequest,
    result: Result<(), String>,
) -> Result<Deployment, DeployError> {
    let failed = result.as_ref().err().cloned();
    let d = reg.record_deployment(&NewDeployment {
        model: v.name.clone(),
        version: v.version,
        target: target.to_string(),
        lora_name: lora_name.to_string(),
        action,
        status: match failed {
            None => "active",
            Some(_) => "failed",
        },
        config: json!({
            "lora_path": v.adapter_path,
            "base_model": v.base_model,
        }),
        notes: req.notes.clone(),
        who: req.who.clone(),
        error: failed.clone(),
    })?;
    match failed {
        None => Ok(d),
        Some(message) => Err(DeployError::Refused {
            target: target.to_string(),
            message,
            deployment: d.id,
        }),
    }
}

/// The command that starts a vLLM server serving version `v` under `lora_name`:
/// `vllm serve BASE --enable-lora --lora-modules NAME=PATH`, with `--max-lora-rank` when the
/// adapter's rank is above vLLM's default of 16.
pub fn serve_command(v: &ModelVersion, lora_name: &str) -> Result<String, DeployError> {
    let path = adapter_of(v)?;
    let mut words = vec![
        "vllm".to_string(),
        "serve".into(),
        v.base_model.clone(),
        "--enable-lora".into(),
        "--lora-modules".into(),
        format!("{lora_name}={path}"),
    ];
    let rank = std::fs::read(std::path::Path::new(path).join("adapter_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| c["r"].as_u64());
    if let Some(r) = rank.filter(|r| *r > 16) {
        // vLLM accepts these ranks only.
        let allowed = [32u64, 64, 128, 256, 320, 512];
        let max = allowed.into_iter().find(|a| *a >= r).unwrap_or(r);
        words.extend(["--max-lora-rank".into(), max.to_string()]);
    }
    Ok(words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "))
}

/// A word as a POSIX shell reads it back.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,%".contains(c));
    match plain {
        true => word.to_string(),
        false => format!("'{}'", word.replace('\'', r"'\''")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_targets_and_the_serve_command() {
        assert_eq!(
            error_message(
                r#"{"object":"error","message":"The lora adapter 'x' has already been loaded.","code":400}"#
            ),
            "The lora adapter 'x' has already been loaded."
        );
        assert_eq!(error_message(""), "(no message)");
        assert_eq!(error_message("boom"), "boom");
        assert_eq!(check_target("http://h:8000/").unwrap(), "http://h:8000");
        assert!(check_target("h:8000").is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), r#"{"r": 48}"#).unwrap();
        let v = ModelVersion {
            name: "pirate".into(),
            version: 2,
            base_model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            adapter_path: Some(dir.path().to_string_lossy().into_owned()),
            adapter_sha256: None,
            remote_model: None,
            job_id: None,
            parent_version: None,
            metrics: Default::default(),
            aliases: Vec::new(),
            created_at: String::new(),
        };
        let cmd = serve_command(&v, "pirate").unwrap();
        assert!(
            cmd.starts_with("vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora --lora-modules pirate=")
                && cmd.ends_with("--max-lora-rank 64"),
            "{cmd}"
        );
        assert_eq!(quote("a b'c"), r"'a b'\''c'");
    }
}
