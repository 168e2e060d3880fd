//! The API's routes that do work beyond reading and writing rows: an evaluation posted as an
//! eval file (checked as `lora-train eval --config` checks it, then run by the worker as a
//! job), a model version deployed to a vLLM server and a deployment rolled back (through
//! [`crate::deploy`], on a connection of their own so that a slow target never holds the
//! server's writer), and a dataset exported to another format with the data tools' converter.

use std::path::{Path as FsPath, PathBuf};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::deploy::{DeployError, DeployRequest, VllmClient};
use crate::harness::config::EvalConfig;
use crate::registry::{
    Backend, Dataset, Deployment, Job, JobKind, JobStatus, Method, NewDataset, NewJob, Registry,
};

use super::error::ApiError;
use super::worker::{job_dir, EVAL_FILE};
use super::AppState;

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Registry(e) => e.into(),
            DeployError::Refused { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "deploy_failed", e.to_string())
            }
            DeployError::Invalid(m) => ApiError::bad_request("invalid", m),
            DeployError::Conflict(m) => ApiError::conflict(m),
        }
    }
}

/// The body's media type, lower-cased, without parameters.
pub(super) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Checks a posted eval file as the CLI checks one (relative paths against the server's
/// working directory), and that the prompts and earlier answers it reads exist.
fn check_eval(text: &str, cwd: &FsPath) -> Result<EvalConfig, ApiError> {
    let invalid = |m: String| ApiError::bad_request("invalid_eval", m);
    let path = cwd.join("posted-eval.toml");
    let (cfg, _) = EvalConfig::load_str(text, &path, &[]).map_err(|e| invalid(e.to_string()))?;
    let mut files = vec![("data.path", &cfg.data.path)];
    for c in &cfg.candidate {
        if let Some(r) = &c.responses {
            files.push(("candidate responses", r));
        }
    }
    for (what, file) in files {
        if !file.is_file() {
            return Err(invalid(format!("{what}: no file {}", file.display())));
        }
    }
    Ok(cfg)
}

/// `POST /api/evaluations`: an eval file (`application/toml`) queued as an eval job.
pub async fn create_evaluation(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let kind = content_type(&headers);
    if !matches!(
        kind.as_str(),
        "application/toml" | "text/toml" | "text/x-toml" | "text/plain"
    ) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content-type `{kind}`: send an eval file as application/toml"),
        ));
    }
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("invalid_toml", "request body: not UTF-8 text"))?;
    let cfg = s.cfg.clone();
    let db = s.db.clone();
    let job = tokio::task::spawn_blocking(move || -> Result<Job, ApiError> {
        let eval = check_eval(&text, &cfg.cwd)?;
        let resolved = toml::to_string(&eval).map_err(ApiError::internal)?;
        let output = eval.output.dir.to_string_lossy().into_owned();
        let name = eval
            .output
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "eval".into());
        let id = db.write_now(|r| {
            r.create_job(&NewJob {
                name,
                kind: JobKind::Eval,
                backend: Backend::Local,
                // The column is required; an evaluation trains nothing.
                method: Method::Sft,
                config_toml: resolved.clone(),
                config_path: None,
                status: JobStatus::Queued,
                autostart: false,
                output_dir: Some(output),
                total_steps: None,
            })
        })?;
        let file = job_dir(&cfg.jobs_root, id).join(EVAL_FILE);
        crate::fsutil::write_atomic(&file, resolved.as_bytes()).map_err(ApiError::internal)?;
        let file = file.to_string_lossy().into_owned();
        db.write_now(|r| {
            r.set_config_path(id, &file, None)?;
            r.request_start(id)
        })
        .map_err(ApiError::from)
    })
    .await
    .map_err(ApiError::internal)??;
    s.worker.wake();
    Ok((StatusCode::CREATED, Json(job)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    target: String,
    lora_name: Option<String>,
    notes: Option<String>,
}

/// A writer connection of its own for a call that waits on another server.
fn own_registry(path: &FsPath) -> Result<Registry, ApiError> {
    Registry::open(path).map_err(ApiError::from)
}

/// `POST /api/models/{name}/versions/{v}/deploy`.
pub async fn deploy_version(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let version: i64 = version
        .parse()
        .map_err(|_| ApiError::not_found(format!("no model {name}@{version}")))?;
    let body: DeployBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("request body: {e}")))?;
    let path = s.db.path().to_path_buf();
    let d = tokio::task::spawn_blocking(move || -> Result<Deployment, ApiError> {
        let reg = own_registry(&path)?;
        let v = reg.model_version(&name, version)?;
        let req = DeployRequest {
            target: body.target,
            lora_name: body.lora_name,
            notes: body.notes,
            who: Some("api".into()),
        };
        Ok(crate::deploy::deploy(
            &reg,
            &VllmClient::from_env(),
            &v,
            &req,
        )?)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok((StatusCode::CREATED, Json(d)))
}

/// `POST /api/deployments/{id}/rollback`.
pub async fn rollback_deployment(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no deployment {id}")))?;
    let path = s.db.path().to_path_buf();
    let d = tokio::task::spawn_blocking(move || -> Result<Deployment, ApiError> {
        let reg = own_registry(&path)?;
        let client = VllmClient::from_env();
        Ok(crate::deploy::rollback(
            &reg,
            &client,
            id,
            Some("api".into()),
        )?)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok((StatusCode::CREATED, Json(d)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    source: PathBuf,
    format: String,
    output: PathBuf,
}

/// `POST /api/datasets/export`: converts `source` to `format` at `output` (relative paths
/// against the server's working directory) and records the output.
pub async fn export_dataset(
    State(s): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    use crate::data::formats::{convert_file, Format};
    let body: ExportBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("request body: {e}")))?;
    let to: Format = body.format.parse().map_err(|e: String| {
        ApiError::bad_request("unknown_format", format!("format `{}`: {e}", body.format))
    })?;
    let cwd = s.cfg.cwd.clone();
    let db = s.db.clone();
    let (dataset, converted) =
        tokio::task::spawn_blocking(move || -> Result<(Dataset, Value), ApiError> {
            let source = cwd.join(&body.source);
            let output = cwd.join(&body.output);
            if !source.is_file() {
                return Err(ApiError::bad_request(
                    "missing_file",
                    format!("source: no file {}", source.display()),
                ));
            }
            // The API never replaces a file: the CLI needs --force for that.
            crate::fsutil::check_new_file(&output, false)
                .map_err(|e| ApiError::conflict(e.to_string()))?;
            let bad = |e: crate::Error| ApiError::bad_request("invalid_dataset", e.to_string());
            let converted = convert_file(&source, None, to).map_err(bad)?;
            crate::fsutil::write_atomic(&output, converted.text.as_bytes()).map_err(bad)?;
            let provenance = format!(
                "api: export {} --to {}",
                source.display(),
                converted.to.name()
            );
            let new = NewDataset::from_file(&output, Some(provenance))?;
            let dataset = db.write_now(|r| {
                let id = r.record_dataset(&new)?;
                r.dataset(id)
            })?;
            let summary = json!({
                "from": converted.from.name(),
                "to": converted.to.name(),
                "records": converted.records,
                "losses": converted.losses,
            });
            Ok((dataset, summary))
        })
        .await
        .map_err(ApiError::internal)??;
    let mut out = json!(dataset);
    out["conversion"] = converted;
    Ok((StatusCode::CREATED, Json(out)))
}
