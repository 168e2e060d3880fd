//! How hosted jobs, records and provider errors are printed.

use lora_train::providers::error::ProviderError;
use lora_train::providers::hosted::{HostedProvider, JobRecord, RemoteJob};

use super::{Records, MAX_SHOWN_FAILURES};

/// A provider error as one line for `main`'s `error:` line; the details of the multi-line
/// ones (every failing dataset line, every warning) go to stderr first.
pub(super) fn explain(e: ProviderError) -> anyhow::Error {
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

pub(super) fn steps(done: Option<u64>, total: Option<u64>) -> String {
    match (done, total) {
        (Some(d), Some(t)) => format!("{d}/{t}"),
        (Some(d), None) => d.to_string(),
        (None, Some(t)) => format!("0/{t}"),
        (None, None) => "-".to_string(),
    }
}

pub(super) fn describe_remote(job: &RemoteJob) -> String {
    let mut text = format!("{} ({})", job.status(), job.provider_status);
    if job.steps_completed.is_some() || job.total_steps.is_some() {
        text.push_str(&format!(
            ", step {}",
            steps(job.steps_completed, job.total_steps)
        ));
    }
    text
}

pub(super) fn print_record(r: &JobRecord) {
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

pub(super) fn print_local_list(records: &Records, list: &[JobRecord]) {
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

pub(super) fn print_remote_list(provider: HostedProvider, list: &[RemoteJob]) {
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
pub(super) fn utc(unix: u64) -> String {
    if unix == 0 {
        return "-".to_string();
    }
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (year, month, day) = lora_train::data::template::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}
