//! `lora-train hosted ...` and `[hosted]` job files: the command-line face of hosted fine-tuning
//! (`lora_train::providers::hosted::HostedJobs`). Commands follow the providers' own CLIs
//! (together-python's `together fine-tuning ...`, openai-python's `fine_tuning.jobs`), with one
//! local record per job, so every command works by job id after a restart. Keys come from the
//! environment only and are never printed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use lora_train::providers::env::Env;
use lora_train::providers::hosted::{
    DownloadKind, HostedJobs, HostedProvider, JobStore, WatchOptions,
};

mod print;
mod submit;

use print::{explain, print_local_list, print_record, print_remote_list};
pub use submit::submit_job_file;
use submit::{dry_run_report, load_hosted_job, submit_and_maybe_watch, watch_until_done};

/// Failing dataset lines shown before the rest are counted.
const MAX_SHOWN_FAILURES: usize = 20;

/// Where the job records live (one JSON file per job).
#[derive(Debug, Clone, Args)]
pub struct JobsDir {
    /// Directory of the local job records [default: $LORA_TRAIN_HOME/hosted, else ~/.lora-train/hosted].
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
        /// Replace a file of the same name already in --out.
        #[arg(long)]
        force: bool,
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
            crate::cli::record::hosted(&record);
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
            crate::cli::record::hosted(&record);
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
            force,
            jobs,
        } => {
            let records = Records::open(&jobs)?;
            let path = records
                .jobs()
                .download(&id, kind, &out, std::io::stderr().is_terminal(), force)
                .map_err(explain)?;
            println!("downloaded {}", path.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::print::utc;
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
