//! The REST API under `/api`: JSON in and out, errors as `{"error": {"code", "message"}}`.
//! Jobs are created, started, cancelled and watched here (server-sent events for progress);
//! models, aliases, comparisons, deployments and datasets are read from the registry;
//! evaluations, deployments and dataset exports are started through [`actions`]. The
//! routes are listed once, in [`ROUTES`], which `docs/openapi.json` is checked against.

use std::convert::Infallible;
use std::path::{Component, Path as FsPath, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::registry::{Job, JobFilter, JobStatus, Registry, RegistryError, VersionRef};

use super::actions;
use super::error::ApiError;
use super::posted::{self, PostedJob};
use super::worker::log_path;
use super::AppState;

/// Every API route as (method, path) in OpenAPI's spelling; `docs/openapi.json` lists the
/// same, which a test checks.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/jobs"),
    ("post", "/api/jobs"),
    ("get", "/api/jobs/{id}"),
    ("delete", "/api/jobs/{id}"),
    ("post", "/api/jobs/{id}/start"),
    ("post", "/api/jobs/{id}/cancel"),
    ("get", "/api/jobs/{id}/metrics"),
    ("get", "/api/jobs/{id}/artifacts"),
    ("get", "/api/jobs/{id}/artifacts/{path}"),
    ("get", "/api/jobs/{id}/log"),
    ("get", "/api/jobs/{id}/events"),
    ("get", "/api/models"),
    ("get", "/api/models/{name}/versions"),
    ("put", "/api/models/{name}/aliases/{alias}"),
    ("post", "/api/models/{name}/versions/{version}/deploy"),
    ("post", "/api/evaluations"),
    ("get", "/api/evaluations/{id}"),
    ("get", "/api/comparisons"),
    ("get", "/api/deployments"),
    ("post", "/api/deployments/{id}/rollback"),
    ("get", "/api/datasets"),
    ("post", "/api/datasets/export"),
    ("get", "/api/formats"),
    ("get", "/api/stats"),
];

/// The API's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/jobs", get(list_jobs).post(create_job))
        .route("/api/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/api/jobs/{id}/start", post(start_job))
        .route("/api/jobs/{id}/cancel", post(cancel_job))
        .route("/api/jobs/{id}/metrics", get(job_metrics))
        .route("/api/jobs/{id}/artifacts", get(job_artifacts))
        .route("/api/jobs/{id}/artifacts/{*path}", get(job_artifact))
        .route("/api/jobs/{id}/log", get(job_log))
        .route("/api/jobs/{id}/events", get(job_events))
        .route("/api/models", get(list_models))
        .route("/api/models/{name}/versions", get(model_versions))
        .route("/api/models/{name}/aliases/{alias}", put(set_alias))
        .route(
            "/api/models/{name}/versions/{version}/deploy",
            post(actions::deploy_version),
        )
        .route("/api/evaluations", post(actions::create_evaluation))
        .route("/api/evaluations/{id}", get(get_evaluation))
        .route("/api/comparisons", get(list_comparisons))
        .route("/api/deployments", get(list_deployments))
        .route(
            "/api/deployments/{id}/rollback",
            post(actions::rollback_deployment),
        )
        .route("/api/datasets", get(list_datasets))
        .route("/api/datasets/export", post(actions::export_dataset))
        .route("/api/formats", get(formats))
        .route("/api/stats", get(stats))
        .fallback(|| async { ApiError::not_found("no such API route") })
}

/// A job id from the path; anything but a number names no job.
fn job_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("no job {raw}")))
}

#[derive(Debug, Deserialize)]
struct JobQuery {
    status: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(
    State(s): State<AppState>,
    Query(q): Query<JobQuery>,
) -> Result<Json<Vec<Job>>, ApiError> {
    let status = q.status.as_deref().map(JobStatus::parse).transpose()?;
    let filter = JobFilter {
        status,
        name: q.name,
        limit: q.limit.unwrap_or(0),
    };
    Ok(Json(s.db.read(move |r| r.jobs(&filter)).await?))
}

#[derive(Debug, Deserialize)]
struct CreateQuery {
    start: Option<bool>,
    name: Option<String>,
}

async fn create_job(
    State(s): State<AppState>,
    Query(q): Query<CreateQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let posted = match actions::content_type(&headers).as_str() {
        "application/json" => posted::from_json(&body)?,
        "application/toml" | "text/toml" | "text/plain" | "text/x-toml" => {
            let text = String::from_utf8(body.to_vec()).map_err(|_| {
                ApiError::bad_request("invalid_toml", "request body: not UTF-8 text")
            })?;
            PostedJob {
                name: None,
                toml: text,
                server_output_dir: false,
            }
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "content-type `{other}`: send a job file as application/toml, or the JSON \
                     job shape as application/json"
                ),
            ))
        }
    };
    let name = q.name.or(posted.name.clone());
    let autostart = q.start.unwrap_or(true);
    let job = posted::create(&s, posted, name, autostart).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

async fn get_job(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    let id = job_id(&id)?;
    Ok(Json(s.db.read(move |r| r.job(id)).await?))
}

async fn start_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = job_id(&id)?;
    let job = s.db.write(move |r| r.request_start(id)).await?;
    s.worker.wake();
    Ok(Json(job))
}

async fn cancel_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = job_id(&id)?;
    let job = s.db.write(move |r| r.request_cancel(id)).await?;
    s.worker.wake();
    Ok(Json(job))
}

#[derive(Debug, Deserialize)]
struct MetricsQuery {
    after_step: Option<i64>,
}

async fn job_metrics(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let points =
        s.db.read(move |r| {
            r.job(id)?;
            r.job_metrics(id, q.after_step)
        })
        .await?;
    Ok(Json(json!({"job_id": id, "metrics": points})))
}

/// The job's output folder, when it has one.
async fn output_dir(s: &AppState, id: i64) -> Result<PathBuf, ApiError> {
    let job = s.db.read(move |r| r.job(id)).await?;
    job.output_dir
        .map(PathBuf::from)
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no output folder")))
}

async fn job_artifacts(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let dir = output_dir(&s, id).await?;
    let files = tokio::task::spawn_blocking(move || list_files(&dir))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"job_id": id, "files": files})))
}

/// Files under `dir`, by relative path, with size and type; at most 2,000.
pub(super) fn list_files(dir: &FsPath) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() && out.len() < 2000 {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .unwrap_or(&e.path())
                    .to_path_buf();
                let name = rel.to_string_lossy().replace('\\', "/");
                out.push(json!({"name": name, "size": meta.len(), "type": file_type(&name)}));
            }
        }
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

/// What a run's file is, by its name.
fn file_type(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("");
    match ext {
        "safetensors" => "weights",
        "json" => "json",
        "jsonl" => "jsonl",
        "svg" => "plot",
        "toml" => "config",
        "md" | "txt" | "log" => "text",
        _ => "file",
    }
}

async fn job_artifact(
    State(s): State<AppState>,
    Path((id, rel)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let dir = output_dir(&s, id).await?;
    let path = inside(&dir, &rel)?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::not_found(format!("job {id} has no file {rel}")))?;
    let content_type = match file_type(&rel) {
        "json" => "application/json",
        "plot" => "image/svg+xml",
        "text" | "config" | "jsonl" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}

/// `rel` inside `dir`: plain names only (no `..`, no root, no drive), and no symbolic link
/// that leads out of it.
pub fn inside(dir: &FsPath, rel: &str) -> Result<PathBuf, ApiError> {
    let refused = || {
        ApiError::bad_request(
            "bad_path",
            format!("`{rel}` is not a path inside the job's output folder"),
        )
    };
    let rel_path = FsPath::new(rel);
    if rel.is_empty()
        || rel.contains('\\')
        || !rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(refused());
    }
    let path = dir.join(rel_path);
    if let (Ok(real), Ok(root)) = (path.canonicalize(), dir.canonicalize()) {
        if !real.starts_with(&root) {
            return Err(refused());
        }
    }
    Ok(path)
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    lines: Option<usize>,
}

async fn job_log(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    s.db.read(move |r| r.job(id)).await?;
    let path = log_path(&s.cfg.jobs_root, id);
    let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        log_tail(&text, q.lines.unwrap_or(100)),
    )
        .into_response())
}

/// The last `n` lines of a log, each progress-bar redraw (`\r`) reduced to its last state and
/// terminal colour codes removed.
pub fn log_tail(text: &str, n: usize) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.rsplit('\r').find(|p| !p.trim().is_empty()).unwrap_or(""))
        .map(strip_ansi)
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Progress and metrics as server-sent events: `progress` (the job row) when it changes,
/// `metrics` (new steps), and `end` once the job has finished.
async fn job_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = job_id(&id)?;
    s.db.read(move |r| r.job(id)).await?;
    struct Cursor {
        db: super::db::Db,
        last_update: String,
        last_step: Option<i64>,
        done: bool,
        first: bool,
    }
    let start = Cursor {
        db: s.db.clone(),
        last_update: String::new(),
        last_step: None,
        done: false,
        first: true,
    };
    let events = stream::unfold(start, move |mut c| async move {
        if c.done {
            return None;
        }
        if !c.first {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        c.first = false;
        let after = c.last_step;
        let read =
            c.db.read(move |r| Ok((r.job(id)?, r.job_metrics(id, after)?)))
                .await;
        let mut out = Vec::new();
        match read {
            Ok((job, points)) => {
                if let Some(last) = points.last() {
                    c.last_step = Some(last.step);
                    out.push(sse("metrics", &json!(points)));
                }
                if job.updated_at != c.last_update {
                    c.last_update = job.updated_at.clone();
                    out.push(sse("progress", &json!(job)));
                }
                if job.status.is_terminal() {
                    out.push(sse("end", &json!({"status": job.status})));
                    c.done = true;
                }
            }
            Err(e) => {
                out.push(sse("error", &json!({"message": e.message})));
                c.done = true;
            }
        }
        Some((stream::iter(out), c))
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn sse(name: &str, data: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().event(name).data(data.to_string()))
}

async fn list_models(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let models = s.db.read(|r| r.models()).await?;
    Ok(Json(json!(models)))
}

async fn model_versions(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let versions = s.db.read(move |r| r.model_versions(&name)).await?;
    Ok(Json(json!(versions)))
}

#[derive(Debug, Deserialize)]
struct AliasBody {
    version: i64,
}

#[derive(Debug, Deserialize)]
struct AliasQuery {
    require_win_over: Option<String>,
}

/// Moves an alias. With `?require_win_over=ALIAS`, only when a registered evaluation shows
/// the candidate beating the version that alias points at: the lower bound of its win rate's
/// 95% CI above 0.5.
async fn set_alias(
    State(s): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    Query(q): Query<AliasQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: AliasBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("request body: {e}")))?;
    let moved =
        s.db.write(move |r| -> Result<Result<Value, ApiError>, RegistryError> {
            r.model_version(&name, body.version)?;
            if let Some(over) = &q.require_win_over {
                if let Err(why) = promotion_gate(r, &name, body.version, over)? {
                    return Ok(Err(ApiError::conflict(why)));
                }
            }
            let before = r.set_alias(&name, &alias, body.version)?;
            Ok(Ok(json!({
                "model": name, "alias": alias, "version": body.version, "previous": before
            })))
        })
        .await??;
    Ok(Json(moved))
}

/// `Ok(Ok(()))` when an evaluation shows `name@version` beating the version `over` points
/// at; `Ok(Err(why))` when none does.
fn promotion_gate(
    r: &Registry,
    name: &str,
    version: i64,
    over: &str,
) -> Result<Result<(), String>, RegistryError> {
    let incumbent = r.resolve_version(&VersionRef::from_alias(name, over)?)?;
    let (a, b) = (
        format!("{name}@{version}"),
        format!("{name}@{}", incumbent.version),
    );
    if incumbent.version == version {
        return Ok(Err(format!("{over} already points at version {version}")));
    }
    Ok(match r.comparison_between(&a, &b)? {
        None => Err(format!(
            "no registered evaluation compares {a} with {b} ({over}); run one with both as \
             candidates first"
        )),
        Some(c) => match c.ci_low {
            Some(low) if low > 0.5 => Ok(()),
            Some(low) => Err(format!(
                "{a} against {b} ({over}): win rate {:.3}, 95% CI lower bound {low:.3}, not \
                 above 0.5 (evaluation comparison {})",
                c.win_rate, c.id
            )),
            None => Err(format!(
                "{a} against {b} ({over}): the evaluation has no confidence interval"
            )),
        },
    })
}

async fn get_evaluation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no evaluation {id}")))?;
    Ok(Json(json!(s.db.read(move |r| r.evaluation(id)).await?)))
}

#[derive(Debug, Deserialize)]
struct ComparisonQuery {
    model: Option<String>,
}

async fn list_comparisons(
    State(s): State<AppState>,
    Query(q): Query<ComparisonQuery>,
) -> Result<Json<Value>, ApiError> {
    let rows =
        s.db.read(move |r| r.comparisons(q.model.as_deref()))
            .await?;
    Ok(Json(json!(rows)))
}

async fn list_deployments(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.db.read(|r| r.deployments()).await?)))
}

async fn list_datasets(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.db.read(|r| r.datasets()).await?)))
}

async fn formats() -> Json<Value> {
    use crate::data::formats::{Format, Kind};
    let rows: Vec<Value> = Format::ALL
        .iter()
        .map(|f| {
            let kind = match f.kind() {
                Kind::Chat => "chat",
                Kind::Preference => "preference",
            };
            json!({"name": f.name(), "kind": kind})
        })
        .collect();
    Json(json!(rows))
}

async fn stats(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stats =
        s.db.read(|r| {
            Ok(json!({
                "jobs_by_status": r.status_counts()?,
                "deployed_models": r.active_deployments()?,
                "average_win_rate": r.average_win_rate()?,
                "models": r.models()?.len(),
            }))
        })
        .await?;
    Ok(Json(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_keeps_the_last_state_of_each_line_without_colours() {
        let log = "one\n\u{1b}[33m WARN\u{1b}[0m two\n10%\r50%\r100%\nlast";
        assert_eq!(log_tail(log, 3), " WARN two\n100%\nlast");
        assert_eq!(log_tail(log, 10).lines().count(), 4);
    }

    #[test]
    fn only_plain_relative_paths_are_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("adapter")).unwrap();
        assert!(inside(dir.path(), "adapter/x.json").is_ok());
        for bad in ["../x", "/etc/passwd", "adapter/../../x", "", "a\\b", "./x"] {
            assert!(inside(dir.path(), bad).is_err(), "{bad}");
        }
    }
}
