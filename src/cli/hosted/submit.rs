//! `[hosted]` job files: load, dry-run report, submit, and watch until the job ends.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context};
use lora_train::config::JobConfig;
use lora_train::providers::env::Env;
use lora_train::providers::hosted::{
    check_dataset, plan_job, HostedConfig, HostedJobSpec, HostedProvider, JobStatus, SubmitOptions,
    WatchOptions, WatchUpdate,
};
use serde_json::{json, Value};

use super::print::{describe_remote, explain};
use super::{JobsDir, Records, MAX_SHOWN_FAILURES};

/// What `lora-train --config job.toml` does when the job has a `[hosted]` section: submit it,
/// then watch it until it ends. Ctrl-C stops watching and leaves the job running.
pub fn submit_job_file(
    path: &Path,
    overrides: &[String],
    accept_warnings: bool,
) -> anyhow::Result<()> {
    let records = Records::open(&JobsDir { jobs_dir: None })?;
    let job = load_hosted_job(path, overrides)?;
    submit_and_maybe_watch(&records, &job, path, accept_warnings, true)
}

/// A job file's `[hosted]` section and the keys it maps.
pub(super) struct HostedJob {
    cfg: HostedConfig,
    spec: HostedJobSpec,
}

pub(super) fn load_hosted_job(path: &Path, overrides: &[String]) -> anyhow::Result<HostedJob> {
    let (mut job, written) = JobConfig::load_written(path, overrides)?;
    let Some(hosted) = job.hosted.take() else {
        bail!(
            "{}: no [hosted] section: add one to train on a provider (see docs/providers.md), or run `lora-train --config {}` to train here",
            path.display(),
            path.display()
        );
    };
    let cfg = HostedConfig::from_table(hosted).with_context(|| path.display().to_string())?;
    let mut spec = HostedJobSpec::from_job(&job, &written);
    if spec.is_dpo() {
        spec.train_file = in_provider_pair_shape(&spec.train_file)?;
        if let Some(v) = spec.validation_file.take() {
            spec.validation_file = Some(in_provider_pair_shape(&v)?);
        }
    }
    // Bad timings would otherwise surface only after the job was created.
    cfg.http_settings()
        .and_then(|_| cfg.poll_interval())
        .with_context(|| path.display().to_string())?;
    Ok(HostedJob { cfg, spec })
}

/// A pair file in the shape both providers take (`dpo-openai`): the file itself when it is in
/// that shape (or unreadable: the dataset checks then name the problem), else its conversion,
/// written once per content under `$LORA_TRAIN_HOME/hosted/uploads/` and named on stderr.
fn in_provider_pair_shape(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    use lora_train::data::formats::{convert_file, read_records, Format};
    let Ok(file) = read_records(path, None) else {
        return Ok(path.to_path_buf());
    };
    if !matches!(file.format, Format::DpoTrl | Format::DpoSeed) {
        return Ok(path.to_path_buf());
    }
    let converted = convert_file(path, Some(file.format), Format::DpoOpenAi)?;
    // Named by its content: 16 hex digits of its SHA-256.
    let digest = &lora_train::fsutil::sha256_hex(converted.text.as_bytes())[..16];
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pairs".into());
    let dir = lora_train::fsutil::home()
        .context("no home folder for the converted pair file: set LORA_TRAIN_HOME")?
        .join("hosted")
        .join("uploads");
    let out = dir.join(format!("{stem}-{digest}.dpo-openai.jsonl"));
    if !out.is_file() {
        lora_train::fsutil::write_atomic(&out, converted.text.as_bytes())?;
    }
    eprintln!(
        "{} is {} pairs: uploading its conversion to the providers' shape (dpo-openai), {}",
        path.display(),
        file.format,
        out.display()
    );
    Ok(out)
}

/// Prints what a submission would send and what the dataset checks found; sends nothing.
pub(super) fn dry_run_report(job: &HostedJob, accept_warnings: bool) -> anyhow::Result<()> {
    let (cfg, spec) = (&job.cfg, &job.spec);
    let plan = plan_job(cfg, spec).map_err(explain)?;
    let env = Env::from_process();
    println!("dry run: nothing is uploaded or submitted");
    println!("provider  {}", cfg.provider);
    println!(
        "endpoint  {}",
        cfg.provider.resolve_base_url(cfg.base_url.as_deref(), &env)
    );
    println!("model     {}", plan.model);
    let accepted = cfg.accept_warnings || accept_warnings;
    if !plan.warnings.is_empty() {
        println!(
            "settings {} would not honour exactly ({}):",
            cfg.provider,
            if accepted { "accepted" } else { "not accepted" }
        );
        for w in &plan.warnings {
            println!("  - {w}");
        }
    }
    let mut body = plan.body.clone();
    if let Value::Object(map) = &mut body {
        map.insert(
            "training_file".into(),
            json!(format!("<id of uploaded {}>", spec.train_file.display())),
        );
        if let Some(v) = &spec.validation_file {
            map.insert(
                "validation_file".into(),
                json!(format!("<id of uploaded {}>", v.display())),
            );
        }
    }
    println!("request body:");
    println!("{}", serde_json::to_string_pretty(&body)?);
    println!("dataset checks ({} rules):", cfg.provider);
    let mut failing = 0;
    let files = std::iter::once(&spec.train_file).chain(spec.validation_file.as_ref());
    for file in files {
        let report = check_dataset(cfg.provider, file, spec.dataset_kind()).map_err(explain)?;
        if report.is_ok() {
            println!(
                "  {}: ok, {} examples{}",
                file.display(),
                report.examples,
                report
                    .format
                    .as_deref()
                    .map(|f| format!(", format {f}"))
                    .unwrap_or_default()
            );
        } else {
            failing += report.failures.len();
            println!(
                "  {}: {} failing {}",
                file.display(),
                report.failures.len(),
                if report.failures.len() == 1 {
                    "check"
                } else {
                    "checks"
                }
            );
            for f in report.failures.iter().take(MAX_SHOWN_FAILURES) {
                println!("    {f}");
            }
            if report.failures.len() > MAX_SHOWN_FAILURES {
                println!(
                    "    ... and {} more",
                    report.failures.len() - MAX_SHOWN_FAILURES
                );
            }
        }
    }
    let unaccepted = if accepted { 0 } else { plan.warnings.len() };
    match (unaccepted, failing) {
        (0, 0) => {
            println!("ready: run again without --dry-run to submit");
            Ok(())
        }
        (0, n) => bail!("dry run: submission would stop at {n} failing dataset checks (listed above)"),
        (w, 0) => bail!("dry run: submission would stop at {w} unaccepted warnings (listed above; pass --accept-warnings or set `accept_warnings = true` in [hosted])"),
        (w, n) => bail!("dry run: submission would stop at {w} unaccepted warnings and {n} failing dataset checks (listed above)"),
    }
}

pub(super) fn submit_and_maybe_watch(
    records: &Records,
    job: &HostedJob,
    path: &Path,
    accept_warnings: bool,
    watch: bool,
) -> anyhow::Result<()> {
    let env = Env::from_process();
    let provider = job.cfg.provider;
    // Before any message about uploading: a missing key is the most common first failure.
    env.api_key(provider.as_str(), provider.api_key_var())
        .map_err(explain)?;
    let jobs = records.jobs();
    let opts = SubmitOptions {
        accept_warnings,
        job_file: Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())),
    };
    println!(
        "checking and uploading {} for {}...",
        job.spec.train_file.display(),
        job.cfg.provider
    );
    let record = jobs.submit(&job.cfg, &job.spec, &opts).map_err(explain)?;
    crate::cli::record::hosted(&record);
    println!(
        "submitted {} job {} (base model {}, status {})",
        record.provider, record.job_id, record.model, record.provider_status
    );
    println!("watch it:  {}", records.command("watch", &record.job_id));
    if !watch {
        return Ok(());
    }
    let opts = WatchOptions {
        poll_interval: job.cfg.poll_interval()?,
        timeout: None,
        progress_bar: std::io::stderr().is_terminal(),
    };
    watch_until_done(records, &record.job_id, &opts)
}

/// Watches a job, printing plain lines when stderr is not a terminal (the bar is hidden there).
pub(super) fn watch_until_done(
    records: &Records,
    id: &str,
    opts: &WatchOptions,
) -> anyhow::Result<()> {
    let jobs = records.jobs();
    let record = jobs.store().find(id).map_err(explain)?;
    let resume = records.command("watch", &record.job_id);
    let stopped = format!(
        "stopped watching; {} job {} keeps running. Resume with: {resume}",
        record.provider, record.job_id
    );
    // The library's watch blocks between polls, so Ctrl-C ends the process here; the record
    // on disk is always whole (written atomically), so a later watch resumes from it. Run by
    // the server's worker, the stop is a cancel request: the remote job is cancelled first.
    let server_job = std::env::var_os(lora_train::serve::JOB_ID_VAR).is_some();
    let (canceller, remote) = (records.jobs(), record.job_id.clone());
    if let Err(e) = ctrlc::set_handler(move || {
        if server_job {
            match canceller.cancel(&remote) {
                Ok(r) => eprintln!(
                    "\ncancel requested: {} job {} is {}",
                    r.provider, r.job_id, r.status
                ),
                Err(e) => eprintln!("\ncould not cancel {remote}: {}", explain(e)),
            }
        } else {
            eprintln!("\n{stopped}");
        }
        std::process::exit(130);
    }) {
        tracing::debug!("Ctrl-C handler not installed: {e}");
    }
    let plain = !opts.progress_bar;
    let mut on_update = |update: &WatchUpdate| {
        if !plain {
            return;
        }
        match update {
            WatchUpdate::Status(job) => println!("status: {}", describe_remote(job)),
            WatchUpdate::Event(e) => {
                println!("[{}] {}", e.kind.as_deref().unwrap_or("event"), e.message)
            }
        }
    };
    let watched = jobs.watch(&record.job_id, opts, &mut on_update);
    // A failed job ends the watch with an error; its stored record has the reason.
    match &watched {
        Ok(r) => crate::cli::record::hosted(r),
        Err(_) => {
            if let Ok(r) = jobs.store().find(&record.job_id) {
                crate::cli::record::hosted(&r);
            }
        }
    }
    let record = watched.map_err(explain)?;
    match record.status {
        JobStatus::Succeeded => {
            println!(
                "{} job {} succeeded{}",
                record.provider,
                record.job_id,
                record
                    .output_model
                    .as_deref()
                    .map(|m| format!(": model {m}"))
                    .unwrap_or_default()
            );
            match record.provider {
                HostedProvider::Together => println!(
                    "download the adapter: {} --out DIR",
                    records.command("download", &record.job_id)
                ),
                HostedProvider::OpenAi => {
                    println!("OpenAI keeps the weights: call the model by name through its API")
                }
            }
        }
        JobStatus::Cancelled => println!("{} job {} was cancelled", record.provider, record.job_id),
        _ => println!(
            "stopped watching; {} job {} is {} ({}). Resume with: {resume}",
            record.provider, record.job_id, record.status, record.provider_status
        ),
    }
    Ok(())
}
