//! `lora-train hosted ...` and `[hosted]` job files: the command-line face of hosted
//! fine-tuning ([`super::hosted::jobs::HostedJobs`]).
//!
//! Commands follow the shape of the providers' own CLIs (together-python's
//! `together fine-tuning create|retrieve|cancel|list|list-events|list-checkpoints|download`,
//! openai-python's `fine_tuning.jobs`), with one local record per job so that every command
//! works by job id after a restart. Keys come from the environment only and are never printed.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::env::Env;
use super::error::ProviderError;
use super::hosted::{
    check_dataset, plan_job, DownloadKind, HostedConfig, HostedJobSpec, HostedJobs, HostedProvider,
    JobRecord, JobStatus, JobStore, RemoteJob, SubmitOptions, WatchOptions, WatchUpdate,
};
use crate::config::JobConfig;

/// Failing dataset lines shown before the rest are counted.
const MAX_SHOWN_FAILURES: usize = 20;

/// Where the job records live (one JSON file per job).
#[derive(Debug, Clone, Args)]
pub struct JobsDir {
    /// Directory of the local job records [default: ~/.lora-train/hosted].
    #[arg(long, value_name = "DIR")]
    pub jobs_dir: Option<PathBuf>,
}

/// A hosted fine-tuning provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderArg {
    /// Together AI (LoRA adapters you can download).
    Together,
    /// OpenAI (the result is a model name to call through its API).
    Openai,
}

impl From<ProviderArg> for HostedProvider {
    fn from(p: ProviderArg) -> Self {
        match p {
            ProviderArg::Together => HostedProvider::Together,
            ProviderArg::Openai => HostedProvider::OpenAi,
        }
    }
}

/// Hosted fine-tuning on Together or OpenAI, from the same job file as a local run.
#[derive(Debug, Subcommand)]
#[command(
    after_help = "Keys are read from TOGETHER_API_KEY / OPENAI_API_KEY only; TOGETHER_BASE_URL / \
OPENAI_BASE_URL override the endpoints. `lora-train --config job.toml` on a job with a [hosted] \
section submits and watches it. See docs/providers.md."
)]
pub enum HostedCommand {
    /// Check, upload and submit a job file with a `[hosted]` section.
    ///
    /// Prints the job id and returns; add --watch to follow it until it ends.
    Submit {
        /// The job file (with a `[hosted]` section).
        #[arg(value_name = "job.toml", required_unless_present = "config")]
        job: Option<PathBuf>,
        /// The job file, as `lora-train --config` takes it.
        #[arg(long, value_name = "job.toml", conflicts_with = "job")]
        config: Option<PathBuf>,
        /// Override one job key, e.g. --set train.lr=1e-4 or --set hosted.suffix=v2 (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
        /// Submit even though some settings would not be honoured exactly by the provider.
        #[arg(long)]
        accept_warnings: bool,
        /// Print the request body and the dataset checks; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// After submitting, watch the job until it ends.
        #[arg(long, conflicts_with = "dry_run")]
        watch: bool,
        #[command(flatten)]
        jobs: JobsDir,
    },
    /// Refresh a job from its provider and show it.
    Status {
        /// The job id (or a unique prefix of it).
        id: String,
        /// Print the job record as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        jobs: JobsDir,
    },
    /// Follow a job until it ends: status, progress and new events. Ctrl-C stops watching only.
    Watch {
        /// The job id (or a unique prefix of it).
        id: String,
        /// Stop watching after this many seconds (the job goes on).
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Seconds between polls.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        poll: f64,
        #[command(flatten)]
        jobs: JobsDir,
    },
    /// Ask the provider to cancel a job.
    Cancel {
        /// The job id (or a unique prefix of it).
        id: String,
        #[command(flatten)]
        jobs: JobsDir,
    },
    /// List the jobs recorded here, or with --remote the provider's own list.
    List {
        /// Ask the provider for its list (jobs submitted elsewhere included).
        #[arg(long, requires = "provider")]
        remote: bool,
        /// The provider to ask (with --remote).
        #[arg(long, value_enum)]
        provider: Option<ProviderArg>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        jobs: JobsDir,
    },
    /// Show a job's events, oldest first.
    Events {
        /// The job id (or a unique prefix of it).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        jobs: JobsDir,
    },
    /// Show a job's saved checkpoints.
    Checkpoints {
        /// The job id (or a unique prefix of it).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        jobs: JobsDir,
    },
    /// Download a finished job's adapter, merged model or checkpoint (Together).
    Download {
        /// The job id (or a unique prefix of it).
        id: String,
        /// What to download: adapter, merged, or step:N (an intermediate checkpoint).
        #[arg(long, value_name = "KIND", default_value = "adapter", value_parser = parse_download_kind)]
        kind: DownloadKind,
        /// The folder to write into.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        jobs: JobsDir,
    },
}

fn parse_download_kind(text: &str) -> Result<DownloadKind, String> {
    match text {
        "adapter" => Ok(DownloadKind::Adapter),
        "merged" => Ok(DownloadKind::Merged),
        _ => text
            .strip_prefix("step:")
            .and_then(|n| n.parse::<u64>().ok())
            .map(DownloadKind::Step)
            .ok_or_else(|| format!("expected adapter, merged or step:N, got `{text}`")),
    }
}

fn seconds(what: &str, secs: f64) -> anyhow::Result<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        bail!("{what} must be a positive number of seconds, got {secs}");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The records directory and how to name it again in a hint.
struct Records {
    store: JobStore,
    /// `--jobs-dir DIR` when not the default, for the commands printed as hints.
    flag: String,
}

impl Records {
    fn open(dir: &JobsDir) -> anyhow::Result<Self> {
        Ok(match &dir.jobs_dir {
            Some(dir) => Records {
                store: JobStore::new(dir),
                flag: format!(" --jobs-dir {}", shell_word(&dir.to_string_lossy())),
            },
            None => Records {
                store: JobStore::new(JobStore::default_dir()?),
                flag: String::new(),
            },
        })
    }

    fn jobs(&self) -> HostedJobs {
        HostedJobs::new(self.store.clone(), Env::from_process())
    }

    fn command(&self, verb: &str, id: &str) -> String {
        format!("lora-train hosted {verb} {}{}", shell_word(id), self.flag)
    }
}

/// `text` quoted for a POSIX shell when it needs it.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@+,".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Runs one `lora-train hosted` command.
pub fn run(cmd: HostedCommand) -> anyhow::Result<()> {
    match cmd {
        HostedCommand::Submit {
            job,
            config,
            set,
            accept_warnings,
            dry_run,
            watch,
            jobs,
        } => {
            let Some(path) = config.or(job) else {
                bail!("give the job file: lora-train hosted submit job.toml");
            };
            let records = Records::open(&jobs)?;
            let job = load_hosted_job(&path, &set)?;
            if dry_run {
                dry_run_report(&job, accept_warnings)
            } else {
                submit_and_maybe_watch(&records, &job, &path, accept_warnings, watch)
            }
        }
        HostedCommand::Status { id, json, jobs } => {
            let records = Records::open(&jobs)?;
            let record = records.jobs().status(&id).map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                print_record(&record);
            }
            Ok(())
        }
        HostedCommand::Watch {
            id,
            timeout,
            poll,
            jobs,
        } => {
            let records = Records::open(&jobs)?;
            let opts = WatchOptions {
                poll_interval: seconds("--poll", poll)?,
                timeout: timeout.map(|t| seconds("--timeout", t)).transpose()?,
                progress_bar: std::io::stderr().is_terminal(),
            };
            watch_until_done(&records, &id, &opts)
        }
        HostedCommand::Cancel { id, jobs } => {
            let records = Records::open(&jobs)?;
            let record = records.jobs().cancel(&id).map_err(explain)?;
            println!(
                "cancel requested for {} job {}: now {} ({})",
                record.provider, record.job_id, record.status, record.provider_status
            );
            if !record.status.is_terminal() {
                println!("follow it: {}", records.command("watch", &record.job_id));
            }
            Ok(())
        }
        HostedCommand::List {
            remote,
            provider,
            json,
            jobs,
        } => {
            let records = Records::open(&jobs)?;
            match (remote, provider) {
                (true, Some(provider)) => {
                    let list = records
                        .jobs()
                        .list_remote(provider.into(), None)
                        .map_err(explain)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        print_remote_list(HostedProvider::from(provider), &list);
                    }
                }
                (true, None) => bail!("--remote needs --provider together|openai"),
                (false, _) => {
                    let mut list = records.jobs().list().map_err(explain)?;
                    if let Some(p) = provider {
                        list.retain(|r| r.provider == HostedProvider::from(p));
                    }
                    if json {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        print_local_list(&records, &list);
                    }
                }
            }
            Ok(())
        }
        HostedCommand::Events { id, json, jobs } => {
            let records = Records::open(&jobs)?;
            let events = records.jobs().events(&id).map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&events)?);
            } else if events.is_empty() {
                println!("no events yet");
            } else {
                for e in &events {
                    println!(
                        "{}  {:<7}  [{}] {}",
                        e.created_at.as_deref().unwrap_or("-"),
                        format!("{:?}", e.level).to_lowercase(),
                        e.kind.as_deref().unwrap_or("event"),
                        e.message
                    );
                }
            }
            Ok(())
        }
        HostedCommand::Checkpoints { id, json, jobs } => {
            let records = Records::open(&jobs)?;
            let checkpoints = records.jobs().checkpoints(&id).map_err(explain)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&checkpoints)?);
            } else if checkpoints.is_empty() {
                println!("no checkpoints yet");
            } else {
                println!(
                    "{:>6}  {:<12}  {:>10}  {:>10}  NAME",
                    "STEP", "KIND", "TRAIN_LOSS", "VALID_LOSS"
                );
                for c in &checkpoints {
                    let loss = |l: Option<f64>| l.map(|l| format!("{l:.4}")).unwrap_or("-".into());
                    println!(
                        "{:>6}  {:<12}  {:>10}  {:>10}  {}",
                        c.step.map(|s| s.to_string()).unwrap_or("-".into()),
                        c.kind.as_deref().unwrap_or("-"),
                        loss(c.train_loss),
                        loss(c.valid_loss),
                        c.name
                    );
                }
            }
            Ok(())
        }
        HostedCommand::Download {
            id,
            kind,
            out,
            jobs,
        } => {
            let records = Records::open(&jobs)?;
            let path = records
                .jobs()
                .download(&id, kind, &out, std::io::stderr().is_terminal())
                .map_err(explain)?;
            println!("downloaded {}", path.display());
            Ok(())
        }
    }
}

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
struct HostedJob {
    cfg: HostedConfig,
    spec: HostedJobSpec,
}

fn load_hosted_job(path: &Path, overrides: &[String]) -> anyhow::Result<HostedJob> {
    let (mut job, written) = JobConfig::load_written(path, overrides)?;
    let Some(hosted) = job.hosted.take() else {
        bail!(
            "{}: no [hosted] section: add one to train on a provider (see docs/providers.md), or run `lora-train --config {}` to train here",
            path.display(),
            path.display()
        );
    };
    let cfg = HostedConfig::from_table(hosted).with_context(|| path.display().to_string())?;
    let spec = HostedJobSpec::from_job(&job, &written);
    // Bad timings would otherwise surface only after the job was created.
    cfg.http_settings()
        .and_then(|_| cfg.poll_interval())
        .with_context(|| path.display().to_string())?;
    Ok(HostedJob { cfg, spec })
}

/// Prints what a submission would send and what the dataset checks found; sends nothing.
fn dry_run_report(job: &HostedJob, accept_warnings: bool) -> anyhow::Result<()> {
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
        let report = check_dataset(cfg.provider, file).map_err(explain)?;
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

fn submit_and_maybe_watch(
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
fn watch_until_done(records: &Records, id: &str, opts: &WatchOptions) -> anyhow::Result<()> {
    let jobs = records.jobs();
    let record = jobs.store().find(id).map_err(explain)?;
    let resume = records.command("watch", &record.job_id);
    let stopped = format!(
        "stopped watching; {} job {} keeps running. Resume with: {resume}",
        record.provider, record.job_id
    );
    // The library's watch blocks between polls, so Ctrl-C ends the process here; the record
    // on disk is always whole (written atomically), so a later watch resumes from it.
    if let Err(e) = ctrlc::set_handler(move || {
        eprintln!("\n{stopped}");
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
    let record = jobs
        .watch(&record.job_id, opts, &mut on_update)
        .map_err(explain)?;
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

/// A provider error as one line for `main`'s `error:` line; the details of the multi-line
/// ones (every failing dataset line, every warning) go to stderr first.
fn explain(e: ProviderError) -> anyhow::Error {
    match e {
        ProviderError::Dataset {
            provider,
            path,
            failures,
        } => {
            for f in failures.iter().take(MAX_SHOWN_FAILURES) {
                eprintln!("  {}: {f}", path.display());
            }
            if failures.len() > MAX_SHOWN_FAILURES {
                eprintln!("  ... and {} more", failures.len() - MAX_SHOWN_FAILURES);
            }
            anyhow::anyhow!(
                "{}: {} failing {} for {provider} (listed above); nothing was uploaded",
                path.display(),
                failures.len(),
                if failures.len() == 1 {
                    "check"
                } else {
                    "checks"
                }
            )
        }
        ProviderError::UnacceptedWarnings { provider, warnings } => {
            eprintln!("{provider} would not honour these settings exactly:");
            for w in &warnings {
                eprintln!("  - {w}");
            }
            anyhow::anyhow!(
                "[hosted] {provider}: {} settings would not be honoured (listed above); set `accept_warnings = true` in [hosted] (or --set hosted.accept_warnings=true) to submit anyway",
                warnings.len()
            )
        }
        other => {
            let text = other.to_string();
            if text.contains('\n') {
                anyhow::anyhow!(text
                    .split('\n')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" "))
            } else {
                anyhow::Error::new(other)
            }
        }
    }
}

fn steps(done: Option<u64>, total: Option<u64>) -> String {
    match (done, total) {
        (Some(d), Some(t)) => format!("{d}/{t}"),
        (Some(d), None) => d.to_string(),
        (None, Some(t)) => format!("0/{t}"),
        (None, None) => "-".to_string(),
    }
}

fn describe_remote(job: &RemoteJob) -> String {
    let mut text = format!("{} ({})", job.status(), job.provider_status);
    if job.steps_completed.is_some() || job.total_steps.is_some() {
        text.push_str(&format!(
            ", step {}",
            steps(job.steps_completed, job.total_steps)
        ));
    }
    text
}

fn print_record(r: &JobRecord) {
    println!("job        {}", r.job_id);
    println!("provider   {} ({})", r.provider, r.base_url);
    println!("status     {} ({})", r.status, r.provider_status);
    println!("steps      {}", steps(r.steps_completed, r.total_steps));
    println!("model      {}", r.model);
    if let Some(m) = &r.output_model {
        println!("output     {m}");
    }
    if let Some(e) = &r.error {
        println!("error      {e}");
    }
    println!(
        "train      {} ({})",
        r.train_file.display(),
        r.train_file_id
    );
    if let (Some(v), Some(id)) = (&r.validation_file, &r.validation_file_id) {
        println!("validation {} ({id})", v.display());
    }
    if let Some(f) = &r.job_file {
        println!("job file   {}", f.display());
    }
    println!("created    {}", utc(r.created_unix));
    println!("updated    {}", utc(r.updated_unix));
    for d in &r.downloads {
        println!("download   {}", d.display());
    }
}

fn print_local_list(records: &Records, list: &[JobRecord]) {
    if list.is_empty() {
        println!(
            "no hosted jobs recorded in {}",
            records.store.dir().display()
        );
        return;
    }
    println!(
        "{:<16}  {:<8}  {:<10}  {:>9}  {:<40}  MODEL",
        "CREATED (UTC)", "PROVIDER", "STATUS", "STEPS", "JOB"
    );
    for r in list {
        println!(
            "{:<16}  {:<8}  {:<10}  {:>9}  {:<40}  {}",
            utc(r.created_unix),
            r.provider.as_str(),
            r.status.as_str(),
            steps(r.steps_completed, r.total_steps),
            r.job_id,
            r.output_model.as_deref().unwrap_or(&r.model)
        );
    }
}

fn print_remote_list(provider: HostedProvider, list: &[RemoteJob]) {
    if list.is_empty() {
        println!("{provider} lists no fine-tuning jobs");
        return;
    }
    println!(
        "{:<24}  {:<10}  {:<16}  {:>9}  {:<40}  MODEL",
        "CREATED", "STATUS", "PROVIDER_STATUS", "STEPS", "JOB"
    );
    for j in list {
        println!(
            "{:<24}  {:<10}  {:<16}  {:>9}  {:<40}  {}",
            j.created_at.as_deref().unwrap_or("-"),
            j.status().as_str(),
            j.provider_status,
            steps(j.steps_completed, j.total_steps),
            j.id,
            j.output_model
                .as_deref()
                .or(j.model.as_deref())
                .unwrap_or("-")
        );
    }
}

/// `YYYY-MM-DD HH:MM` in UTC, from Unix seconds (days-to-civil after H. Hinnant).
fn utc(unix: u64) -> String {
    if unix == 0 {
        return "-".to_string();
    }
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (year, month, day) = crate::data::template::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_kinds_and_words() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc(1_735_787_045), "2025-01-02 03:04");
        assert_eq!(parse_download_kind("step:12"), Ok(DownloadKind::Step(12)));
        assert_eq!(parse_download_kind("merged"), Ok(DownloadKind::Merged));
        assert!(parse_download_kind("step:x").is_err());
        assert_eq!(shell_word("ft-1"), "ft-1");
        assert_eq!(shell_word("a b'c"), "'a b'\\''c'");
    }
}
