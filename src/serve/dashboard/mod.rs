//! The dashboard: server-rendered pages (minijinja templates and assets compiled into the
//! binary, no JS build, works offline) over the same registry as the API. Live parts (job
//! tables, a job's progress, loss chart and log) are `data-live` regions that a few lines of
//! plain JS refresh from `?partial=1`, the template's `live` block rendered alone.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use minijinja::{context, Environment, Value};
use serde::{Deserialize, Serialize};

use crate::registry::{Backend, JobFilter, JobStatus, Registry, RegistryError};
use crate::train::metrics::{line_plot_svg, Series};

use super::error::ApiError;
use super::posted;
use super::AppState;

mod charts;

/// The dashboard's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/jobs", get(jobs))
        .route("/jobs/new", get(new_job_form).post(new_job_submit))
        .route("/jobs/{id}", get(job_page))
        .route("/models", get(models))
        .route("/compare", get(compare))
        .route("/deployments", get(deployments))
        .route("/assets/{file}", get(asset))
}

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        for (name, text) in [
            ("base.html", include_str!("templates/base.html")),
            ("macros.html", include_str!("templates/macros.html")),
            ("overview.html", include_str!("templates/overview.html")),
            ("jobs.html", include_str!("templates/jobs.html")),
            ("job.html", include_str!("templates/job.html")),
            ("new_job.html", include_str!("templates/new_job.html")),
            ("models.html", include_str!("templates/models.html")),
            ("compare.html", include_str!("templates/compare.html")),
            (
                "deployments.html",
                include_str!("templates/deployments.html"),
            ),
        ] {
            // The templates are part of the binary and checked by the tests.
            if let Err(e) = env.add_template(name, text) {
                tracing::error!("dashboard template {name}: {e}");
            }
        }
        env
    })
}

/// A page that could not be shown, as a small HTML page with its status.
struct PageError(StatusCode, String);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e.status, e.message)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = format!(
            "<!doctype html><meta charset=\"utf-8\"><title>{0}</title>\
             <link rel=\"stylesheet\" href=\"/assets/style.css\"><main><h1>{0}</h1>\
             <p>{1}</p><p><a href=\"/\">Overview</a></p></main>",
            self.0,
            html_escape(&self.1)
        );
        (self.0, Html(body)).into_response()
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders `name` with `ctx`; only its `live` block with `partial`.
fn render(name: &str, ctx: Value, partial: bool) -> Result<Response, PageError> {
    let internal =
        |e: minijinja::Error| PageError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let tmpl = templates().get_template(name).map_err(internal)?;
    let html = match partial {
        true => tmpl
            .render_captured_to(ctx, std::io::sink())
            .and_then(|mut captured| captured.with_state_mut(|s| s.render_block("live")))
            .map_err(internal)?,
        false => tmpl.render(ctx).map_err(internal)?,
    };
    Ok(Html(html).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct Partial {
    partial: Option<u8>,
}

impl Partial {
    fn on(&self) -> bool {
        self.partial == Some(1)
    }
}

async fn overview(
    State(s): State<AppState>,
    Query(p): Query<Partial>,
) -> Result<Response, PageError> {
    let data =
        s.db.read(|r| {
            let recent = r.jobs(&JobFilter {
                limit: 10,
                ..Default::default()
            })?;
            Ok((
                r.status_counts()?,
                r.active_deployments()?,
                r.models()?.len(),
                r.average_win_rate()?,
                recent,
            ))
        })
        .await?;
    let (counts, deployed, models, win_rate, jobs) = data;
    render(
        "overview.html",
        context! { title => "Overview", page => "overview", counts => counts.0, deployed,
        models, win_rate, jobs },
        p.on(),
    )
}

async fn jobs(State(s): State<AppState>, Query(p): Query<Partial>) -> Result<Response, PageError> {
    let jobs =
        s.db.read(|r| {
            r.jobs(&JobFilter {
                limit: 500,
                ..Default::default()
            })
        })
        .await?;
    render(
        "jobs.html",
        context! { title => "Jobs", page => "jobs", jobs },
        p.on(),
    )
}

async fn job_page(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<Partial>,
) -> Result<Response, PageError> {
    let id: i64 = id
        .parse()
        .map_err(|_| PageError(StatusCode::NOT_FOUND, format!("no job {id}")))?;
    let (job, points) =
        s.db.read(move |r| Ok((r.job(id)?, r.job_metrics(id, None)?)))
            .await?;
    let log_path = super::worker::log_path(&s.cfg.jobs_root, id);
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    let artifacts = job
        .output_dir
        .as_deref()
        .map(|d| super::api::list_files(std::path::Path::new(d)))
        .unwrap_or_default();
    let series = |key: &str| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter_map(|p| p.values.get(key).map(|v| (p.step as f64, *v)))
            .collect()
    };
    let chart = line_plot_svg(
        &format!("{} (job {id})", job.name),
        "optimizer step",
        "loss",
        &[
            Series {
                label: "train loss".into(),
                color: "#1f77b4",
                points: series("loss"),
                dots: false,
            },
            Series {
                label: "validation loss".into(),
                color: "#d62728",
                points: series("val_loss"),
                dots: true,
            },
        ],
    );
    let local = job.backend == Backend::Local;
    let can_cancel = matches!(
        job.status,
        JobStatus::Queued | JobStatus::Preparing | JobStatus::Training
    );
    let can_resume = local && matches!(job.status, JobStatus::Failed | JobStatus::Cancelled)
        || job.status == JobStatus::Queued && !job.autostart;
    let done = job.status.is_terminal();
    render(
        "job.html",
        context! {
            title => format!("Job {id}"), page => "jobs", job, artifacts, done, can_cancel,
            can_resume, log => super::api::log_tail(&log, 40),
            chart => chart.map(Value::from_safe_string),
        },
        p.on(),
    )
}

/// One field of the new-job form: the seeds' parameter names, our defaults.
#[derive(Debug, Clone, Serialize)]
struct Field {
    name: &'static str,
    label: &'static str,
    value: String,
    help: &'static str,
    /// The job key the field becomes, to place an error the job checks find.
    key: &'static str,
    choices: Option<Vec<&'static str>>,
    placeholder: Option<&'static str>,
    error: Option<String>,
}

fn fields(given: &BTreeMap<String, String>) -> Vec<Field> {
    let f = |name, label, default: &str, help, key, choices: Option<Vec<&'static str>>| Field {
        name,
        label,
        value: given
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string()),
        help,
        key,
        choices,
        placeholder: None,
        error: None,
    };
    let mut out = vec![
        f("name", "Name", "", "the model it registers", "name", None),
        f(
            "base_model",
            "Base model",
            "",
            "folder, .gguf file or org/name",
            "model.source",
            None,
        ),
        f(
            "dataset_path",
            "Dataset",
            "",
            "a .jsonl chat or pair file",
            "data.train",
            None,
        ),
        f("lora_r", "LoRA rank", "16", "lora.r", "lora.r", None),
        f(
            "lora_alpha",
            "LoRA alpha",
            "32",
            "lora.alpha",
            "lora.alpha",
            None,
        ),
        f(
            "lora_dropout",
            "LoRA dropout",
            "0.0",
            "lora.dropout",
            "lora.dropout",
            None,
        ),
        f(
            "num_epochs",
            "Epochs",
            "1",
            "train.epochs",
            "train.epochs",
            None,
        ),
        f(
            "batch_size",
            "Batch size",
            "1",
            "train.micro_batch_size",
            "train.micro_batch_size",
            None,
        ),
        f(
            "learning_rate",
            "Learning rate",
            "0.0002",
            "train.lr",
            "train.lr",
            None,
        ),
        f(
            "max_seq_length",
            "Max sequence length",
            "2048",
            "data.max_seq_len",
            "data.max_seq_len",
            None,
        ),
        f(
            "quantization",
            "Quantization",
            "none",
            "model.quantize (4bit = nf4)",
            "model.quantize",
            Some(vec!["none", "4bit", "8bit"]),
        ),
        f(
            "gradient_checkpointing",
            "Gradient checkpointing",
            "false",
            "train.gradient_checkpointing",
            "train.gradient_checkpointing",
            Some(vec!["false", "true"]),
        ),
    ];
    out[1].placeholder = Some("models/smollm2-135m-instruct.Q4_1.gguf");
    out[2].placeholder = Some("data/quickstart/train.jsonl");
    out
}

async fn new_job_form() -> Result<Response, PageError> {
    let fields = fields(&BTreeMap::new());
    render(
        "new_job.html",
        context! { title => "New job", page => "new", fields },
        false,
    )
}

/// Checks the form, posts it as the seeds' JSON job shape, and goes to the new job's page;
/// on an error, the form again with the error beside its field.
async fn new_job_submit(
    State(s): State<AppState>,
    Form(given): Form<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let mut fields = fields(&given);
    let value = |name: &str| {
        given
            .get(name)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let mut config = serde_json::Map::new();
    for f in fields.iter_mut() {
        // A field the form left out keeps its default, as the browser would send it.
        let text = f.value.trim().to_string();
        let parsed: Result<serde_json::Value, String> = match f.name {
            "name" | "base_model" | "dataset_path" => match text.is_empty() {
                true => Err("required".into()),
                false => Ok(text.clone().into()),
            },
            "lora_r" | "batch_size" | "max_seq_length" => text
                .parse::<u64>()
                .map(Into::into)
                .map_err(|_| format!("`{text}` is not a whole number")),
            "lora_alpha" | "lora_dropout" | "num_epochs" | "learning_rate" => text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Into::into)
                .ok_or_else(|| format!("`{text}` is not a number")),
            "gradient_checkpointing" => Ok((text == "true").into()),
            _ => Ok(text.clone().into()),
        };
        match parsed {
            Ok(v) if !matches!(f.name, "name" | "base_model" | "dataset_path") => {
                config.insert(f.name.to_string(), v);
            }
            Ok(_) => {}
            Err(e) => f.error = Some(e),
        }
    }
    let form_error = |fields: Vec<Field>, error: Option<String>| {
        let page = render(
            "new_job.html",
            context! { title => "New job", page => "new", fields, error },
            false,
        );
        page.map(|r| (StatusCode::BAD_REQUEST, r).into_response())
    };
    if fields.iter().any(|f| f.error.is_some()) {
        return form_error(fields, Some("Some fields need a change.".into()));
    }
    let body = serde_json::json!({
        "name": value("name"),
        "base_model": value("base_model"),
        "dataset_path": value("dataset_path"),
        "training_config": config,
    });
    let created = match posted::from_json(body.to_string().as_bytes()) {
        Ok(p) => posted::create(&s, p, Some(value("name")), true).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(job) => Ok(Redirect::to(&format!("/jobs/{}", job.id)).into_response()),
        Err(e) if e.status.is_client_error() => {
            // Beside the field whose job key the message names, else above the form.
            let placed = fields
                .iter_mut()
                .filter(|f| f.key.contains('.'))
                .find(|f| e.message.contains(&format!("`{}`", f.key)) || e.message.contains(f.key));
            match placed {
                Some(f) => {
                    f.error = Some(e.message.clone());
                    form_error(fields, None)
                }
                None => form_error(fields, Some(e.message)),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Serialize)]
struct ModelRows {
    name: String,
    base_model: String,
    versions: Vec<crate::registry::ModelVersion>,
}

async fn models(State(s): State<AppState>) -> Result<Response, PageError> {
    let models =
        s.db.read(|r| {
            r.models()?
                .into_iter()
                .map(|m| {
                    Ok(ModelRows {
                        versions: r.model_versions(&m.name)?,
                        name: m.name,
                        base_model: m.base_model,
                    })
                })
                .collect::<Result<Vec<_>, RegistryError>>()
        })
        .await?;
    render(
        "models.html",
        context! { title => "Models", page => "models", models },
        false,
    )
}

#[derive(Debug, Deserialize)]
struct CompareQuery {
    a: Option<String>,
    b: Option<String>,
}

#[derive(Debug, Serialize)]
struct TraitBars {
    name: String,
    a: Option<f64>,
    b: Option<f64>,
    a_pct: f64,
    b_pct: f64,
}

#[derive(Debug, Serialize)]
struct Replies {
    id: String,
    a: String,
    b: String,
}

async fn compare(
    State(s): State<AppState>,
    Query(q): Query<CompareQuery>,
) -> Result<Response, PageError> {
    let (a, b) = (q.a.filter(|v| !v.is_empty()), q.b.filter(|v| !v.is_empty()));
    let (qa, qb) = (a.clone(), b.clone());
    let found =
        s.db.read(move |r| {
            let versions = all_versions(r)?;
            let found = match (&qa, &qb) {
                (Some(a), Some(b)) => match r.comparison_between(a, b)? {
                    Some(c) => {
                        let eval = r.evaluation(c.evaluation_id)?;
                        Some((c, eval))
                    }
                    None => None,
                },
                _ => None,
            };
            Ok((versions, found))
        })
        .await?;
    let (versions, found) = found;
    let (mut comparison, mut win_chart, mut traits, mut replies) = (None, None, vec![], vec![]);
    if let Some((c, eval)) = found {
        win_chart = Some(Value::from_safe_string(charts::win_rate_svg(
            c.win_rate, c.ci_low, c.ci_high,
        )));
        traits = trait_bars(&eval.report, &c.candidate_a, &c.candidate_b);
        if let Some(dir) = &eval.output_dir {
            replies = side_by_side(std::path::Path::new(dir), &c.candidate_a, &c.candidate_b);
        }
        comparison = Some(c);
    }
    render(
        "compare.html",
        context! { title => "Compare", page => "compare", versions, a, b, comparison,
        win_chart, traits, replies },
        false,
    )
}

/// Every registered version as `name@version`.
fn all_versions(r: &Registry) -> Result<Vec<String>, RegistryError> {
    let mut out = Vec::new();
    for m in r.models()? {
        for v in r.model_versions(&m.name)? {
            out.push(format!("{}@{}", v.name, v.version));
        }
    }
    Ok(out)
}

/// The report's trait means of the two candidates, scaled to the largest (`report.json` names
/// a trait row's trait `trait`).
fn trait_bars(report: &serde_json::Value, a: &str, b: &str) -> Vec<TraitBars> {
    let rows = report["traits"].as_array().cloned().unwrap_or_default();
    let mean = |cand: &str, name: &str| {
        rows.iter()
            .find(|t| t["candidate"] == cand && t["trait"] == name)
            .and_then(|t| t["mean"].as_f64())
    };
    let mut names: Vec<String> = rows
        .iter()
        .filter_map(|t| t["trait"].as_str().map(String::from))
        .collect();
    names.dedup();
    names.sort();
    names.dedup();
    let top = rows
        .iter()
        .filter_map(|t| t["mean"].as_f64())
        .fold(1.0, f64::max);
    names
        .into_iter()
        .map(|name| {
            let (va, vb) = (mean(a, &name), mean(b, &name));
            TraitBars {
                a_pct: va.unwrap_or(0.0) / top * 100.0,
                b_pct: vb.unwrap_or(0.0) / top * 100.0,
                a: va,
                b: vb,
                name,
            }
        })
        .collect()
}

/// The two candidates' replies per prompt, from the eval's `generations/NAME.jsonl`.
fn side_by_side(dir: &std::path::Path, a: &str, b: &str) -> Vec<Replies> {
    let read = |name: &str| -> BTreeMap<String, String> {
        let Ok(path) = super::api::inside(dir, &format!("generations/{name}.jsonl")) else {
            return BTreeMap::new();
        };
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|g| {
                Some((
                    g["id"].as_str()?.to_string(),
                    g["response"].as_str()?.to_string(),
                ))
            })
            .collect()
    };
    let (ra, rb) = (read(a), read(b));
    ra.into_iter()
        .filter_map(|(id, a)| {
            rb.get(&id).map(|b| Replies {
                b: b.clone(),
                a,
                id,
            })
        })
        .take(100)
        .collect()
}

async fn deployments(State(s): State<AppState>) -> Result<Response, PageError> {
    let deployments = s.db.read(|r| r.deployments()).await?;
    render(
        "deployments.html",
        context! { title => "Deployments", page => "deployments", deployments },
        false,
    )
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "style.css" => (include_str!("assets/style.css"), "text/css; charset=utf-8"),
        "app.js" => (
            include_str!("assets/app.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return PageError(StatusCode::NOT_FOUND, format!("no asset {file}")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        let env = templates();
        for name in [
            "overview.html",
            "jobs.html",
            "job.html",
            "new_job.html",
            "models.html",
            "compare.html",
            "deployments.html",
        ] {
            env.get_template(name).unwrap();
        }
    }

    #[test]
    fn trait_bars_pair_the_candidates_and_scale_to_the_largest() {
        let report = serde_json::json!({"traits": [
            {"candidate": "adapter", "trait": "pirate", "mean": 8.0},
            {"candidate": "base", "trait": "pirate", "mean": 2.0},
            {"candidate": "adapter", "trait": "helpful", "mean": 4.0},
        ]});
        let bars = trait_bars(&report, "adapter", "base");
        assert_eq!(bars.len(), 2);
        let pirate = bars.iter().find(|b| b.name == "pirate").unwrap();
        assert_eq!((pirate.a_pct, pirate.b_pct), (100.0, 25.0));
        let helpful = bars.iter().find(|b| b.name == "helpful").unwrap();
        assert_eq!((helpful.a, helpful.b), (Some(4.0), None));
    }
}
