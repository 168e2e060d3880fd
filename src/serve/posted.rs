//! Jobs posted to the API: a job file (`application/toml`), or the seeds' JSON shape
//! (`{name, base_model, dataset_path, training_config: {...}}`) mapped onto our job keys. Both
//! are checked as `lora-train --config` checks a file, with relative paths taken from the
//! server's working directory.

use std::path::Path;

use serde::Deserialize;

use crate::config::JobConfig;
use crate::registry::{Backend, Job, JobKind, JobStatus, Method, NewJob, RegistryError};

use super::error::ApiError;
use super::worker::job_dir;
use super::AppState;

/// A posted job before it is checked: its text as a job file, and the name it was given.
#[derive(Debug, Clone)]
pub struct PostedJob {
    pub name: Option<String>,
    pub toml: String,
    /// Whether the job's output folder is the server's to choose (JSON jobs have none).
    pub server_output_dir: bool,
}

/// The seeds' job shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedJob {
    name: String,
    base_model: String,
    dataset_path: String,
    #[serde(default)]
    training_config: SeedTrainingConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedTrainingConfig {
    lora_r: Option<u64>,
    lora_alpha: Option<f64>,
    lora_dropout: Option<f64>,
    num_epochs: Option<f64>,
    batch_size: Option<u64>,
    learning_rate: Option<f64>,
    max_seq_length: Option<u64>,
    quantization: Option<String>,
    gradient_checkpointing: Option<bool>,
}

/// The output folder a JSON job is given before its id is known; replaced once it is.
pub const PENDING_OUTPUT: &str = "pending-output";

/// Reads the seeds' JSON shape into a job file.
pub fn from_json(body: &[u8]) -> Result<PostedJob, ApiError> {
    let seed: SeedJob = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("request body: {e}")))?;
    let t = seed.training_config;
    let mut model = toml::Table::new();
    model.insert("source".into(), seed.base_model.into());
    if let Some(q) = t.quantization.as_deref() {
        let ours = match q {
            "4bit" => "nf4",
            "8bit" => "q8_0",
            "none" => "none",
            other => {
                return Err(ApiError::bad_request(
                    "invalid_job",
                    format!(
                        "training_config.quantization: `{other}` is not one of 4bit, 8bit, none"
                    ),
                ))
            }
        };
        model.insert("quantize".into(), ours.into());
    }
    let mut lora = toml::Table::new();
    put(
        &mut lora,
        "r",
        t.lora_r.map(|v| toml::Value::Integer(v as i64)),
    );
    put(&mut lora, "alpha", t.lora_alpha.map(toml::Value::Float));
    put(&mut lora, "dropout", t.lora_dropout.map(toml::Value::Float));
    let mut data = toml::Table::new();
    data.insert("train".into(), seed.dataset_path.into());
    put(
        &mut data,
        "max_seq_len",
        t.max_seq_length.map(|v| toml::Value::Integer(v as i64)),
    );
    let mut train = toml::Table::new();
    put(&mut train, "epochs", t.num_epochs.map(toml::Value::Float));
    put(
        &mut train,
        "micro_batch_size",
        t.batch_size.map(|v| toml::Value::Integer(v as i64)),
    );
    put(&mut train, "lr", t.learning_rate.map(toml::Value::Float));
    put(
        &mut train,
        "gradient_checkpointing",
        t.gradient_checkpointing.map(toml::Value::Boolean),
    );
    let mut output = toml::Table::new();
    output.insert("dir".into(), PENDING_OUTPUT.into());
    let mut doc = toml::Table::new();
    for (section, table) in [
        ("model", model),
        ("lora", lora),
        ("data", data),
        ("train", train),
        ("output", output),
    ] {
        if !table.is_empty() {
            doc.insert(section.into(), toml::Value::Table(table));
        }
    }
    let toml = toml::to_string(&doc).map_err(ApiError::internal)?;
    Ok(PostedJob {
        name: Some(seed.name),
        toml,
        server_output_dir: true,
    })
}

fn put(table: &mut toml::Table, key: &str, value: Option<toml::Value>) {
    if let Some(v) = value {
        table.insert(key.into(), v);
    }
}

/// Checks a posted job as the CLI checks a job file (`posted.toml` in the server's working
/// directory, for errors and relative paths), and that the files it reads exist.
pub fn check(posted: &PostedJob, cwd: &Path) -> Result<JobConfig, ApiError> {
    let path = cwd.join("posted.toml");
    let invalid = |e: crate::Error| ApiError::bad_request("invalid_job", e.to_string());
    let job = JobConfig::load_str_checked(
        &posted.toml,
        &path,
        &[],
        crate::harness::training::check_job,
    )
    .map_err(invalid)?;
    job.check_files().map_err(invalid)?;
    Ok(job)
}

/// Checks a posted job, creates its row, writes the resolved job file into the job's folder
/// (the worker runs that file), and queues it; held until started when `autostart` is false.
/// The worker is woken.
pub async fn create(
    state: &AppState,
    posted: PostedJob,
    name: Option<String>,
    autostart: bool,
) -> Result<Job, ApiError> {
    let cfg = state.cfg.clone();
    let db = state.db.clone();
    let job = tokio::task::spawn_blocking(move || -> Result<Job, ApiError> {
        let mut job = check(&posted, &cfg.cwd)?;
        let name = name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| default_name(&job.output.dir));
        // A `[hosted]` job runs as `lora-train --config`, which submits it and follows it.
        let backend = match job.hosted.as_ref() {
            None => Backend::Local,
            Some(table) => {
                use crate::providers::hosted::{HostedConfig, HostedProvider};
                let cfg = HostedConfig::from_table(table.clone())
                    .map_err(|e| ApiError::bad_request("invalid_job", e.to_string()))?;
                match cfg.provider {
                    HostedProvider::Together => Backend::Together,
                    HostedProvider::OpenAi => Backend::OpenAi,
                }
            }
        };
        let method = match job.is_dpo() {
            true => Method::Dpo,
            false => Method::Sft,
        };
        let id = db.write_now(|r| {
            r.create_job(&NewJob {
                name,
                kind: JobKind::Train,
                backend,
                method,
                config_toml: posted.toml.clone(),
                config_path: None,
                status: JobStatus::Queued,
                autostart: false,
                output_dir: None,
                total_steps: None,
            })
        })?;
        let dir = job_dir(&cfg.jobs_root, id);
        if posted.server_output_dir {
            job.output.dir = dir.join("output");
        }
        // A hosted job's mapping reads which keys were written: it keeps the posted keys only.
        let resolved = match backend {
            Backend::Local => job.to_toml_string().map_err(ApiError::internal)?,
            _ => written_with_resolved_paths(&posted.toml, &job)?,
        };
        let config = dir.join("job.toml");
        crate::fsutil::write_atomic(&config, resolved.as_bytes()).map_err(ApiError::internal)?;
        let output = job.output.dir.to_string_lossy().into_owned();
        let config = config.to_string_lossy().into_owned();
        db.write_now(|r| -> Result<Job, RegistryError> {
            r.set_job_outputs(id, Some(&output), None)?;
            r.set_config_path(
                id,
                &config,
                posted.server_output_dir.then_some(resolved.as_str()),
            )?;
            match autostart {
                true => r.request_start(id),
                false => r.job(id),
            }
        })
        .map_err(ApiError::from)
    })
    .await
    .map_err(ApiError::internal)??;
    state.worker.wake();
    Ok(job)
}

/// The posted job file with only its own keys, its file paths made absolute as `job`
/// resolved them (the worker runs the file from the job's folder).
fn written_with_resolved_paths(posted: &str, job: &JobConfig) -> Result<String, ApiError> {
    use crate::config::job::ValidationSpec;
    let mut table: toml::Table = posted
        .parse()
        .map_err(|e| ApiError::bad_request("invalid_job", format!("posted job: {e}")))?;
    let path = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned());
    let mut paths = vec![
        (
            "model",
            "source",
            toml::Value::String(job.model.source.clone()),
        ),
        ("data", "train", path(&job.data.train)),
        ("output", "dir", path(&job.output.dir)),
    ];
    if let Some(ValidationSpec::File(f)) = &job.data.validation {
        paths.push(("data", "validation", path(f)));
    }
    if let Some(dir) = &job.lora.init_adapter {
        paths.push(("lora", "init_adapter", path(dir)));
    }
    for (section, key, value) in paths {
        if let Some(slot) = table
            .get_mut(section)
            .and_then(|s| s.as_table_mut())
            .and_then(|t| t.get_mut(key))
        {
            *slot = value;
        }
    }
    toml::to_string(&table).map_err(ApiError::internal)
}

/// A job's name when none is given: its output folder's name.
fn default_name(output: &Path) -> String {
    output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "job".into())
}
