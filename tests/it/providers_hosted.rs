//! Hosted fine-tuning against fake Together and OpenAI APIs on loopback: the upload
//! flows, the create bodies, watch with events and statuses, failures, cancel,
//! restart from the local records, download, and the checks that run before upload.

use crate::providers_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lora_train::config::JobConfig;
use lora_train::data::LossOn;
use lora_train::providers::hosted::{plan_job, Checkpoint};
use lora_train::providers::{
    DownloadKind, Env, HostedConfig, HostedJobSpec, HostedJobs, HostedProvider, HttpSettings,
    JobStatus, JobStore, ProviderError, RetryPolicy, SubmitOptions, WatchOptions, WatchUpdate,
};
use providers_support::apis::{
    self, Outcome, ADAPTER_BYTES, OPENAI_JOB, OPENAI_MODEL, TOGETHER_FAILURE, TOGETHER_JOB,
    TOGETHER_OUTPUT,
};
use serde_json::json;

const TOGETHER_KEY: &str = "tg-hosted-test-key";
const OPENAI_KEY: &str = "sk-hosted-test-key";
const GOOD: &str = r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Paris."}]}"#;

fn env() -> Env {
    Env::from_pairs([
        ("TOGETHER_API_KEY", TOGETHER_KEY),
        ("OPENAI_API_KEY", OPENAI_KEY),
    ])
}

fn fast() -> HttpSettings {
    HttpSettings {
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_retries: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_retry_after: Duration::from_secs(2),
        },
        max_concurrency: None,
        requests_per_minute: None,
    }
}

fn jobs(dir: &Path) -> HostedJobs {
    HostedJobs::new(JobStore::new(dir.join("records")), env()).with_http_settings(fast())
}

fn watch_fast() -> WatchOptions {
    WatchOptions {
        poll_interval: Duration::from_millis(5),
        timeout: Some(Duration::from_secs(20)),
        progress_bar: false,
    }
}

fn dataset(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn together_cfg(api: &apis::FakeApi) -> HostedConfig {
    let mut cfg = HostedConfig::new(HostedProvider::Together);
    cfg.base_url = Some(api.base_url());
    cfg.model = Some("meta-llama/Meta-Llama-3.1-8B-Instruct-Reference".into());
    cfg.suffix = Some("bot".into());
    cfg.n_checkpoints = Some(2);
    cfg
}

fn openai_cfg(api: &apis::FakeApi) -> HostedConfig {
    let mut cfg = HostedConfig::new(HostedProvider::OpenAi);
    cfg.base_url = Some(api.base_url());
    cfg.model = Some("gpt-4o-mini-2024-07-18".into());
    cfg.learning_rate_multiplier = Some(1.8);
    cfg
}

fn spec(train: PathBuf) -> HostedJobSpec {
    HostedJobSpec {
        train_file: train,
        lora_r: Some(16),
        lora_alpha: Some(32.0),
        lora_dropout: Some(0.05),
        target_modules: Some(vec!["all-linear".into()]),
        epochs: Some(2.0),
        lr: Some(1e-4),
        scheduler: Some("cosine".into()),
        warmup_ratio: Some(0.05),
        micro_batch_size: Some(4),
        grad_accum: Some(2),
        loss_on: Some(LossOn::AllAssistant),
        seed: Some(7),
        ..HostedJobSpec::default()
    }
}

fn openai_spec(train: PathBuf) -> HostedJobSpec {
    HostedJobSpec {
        train_file: train,
        epochs: Some(2.0),
        micro_batch_size: Some(4),
        seed: Some(42),
        ..HostedJobSpec::default()
    }
}

#[test]
fn together_upload_follows_the_presigned_302_flow_then_creates_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::together(Outcome::Succeed);
    let train = dataset(dir.path(), "train.jsonl", &[GOOD, GOOD]);
    let record = jobs(dir.path())
        .submit(
            &together_cfg(&api),
            &spec(train.clone()),
            &SubmitOptions::default(),
        )
        .unwrap();
    assert_eq!(record.job_id, TOGETHER_JOB);
    assert_eq!(record.status, JobStatus::Queued);
    assert_eq!(record.provider_status, "pending");
    assert_eq!(record.train_file_id, "file-1");
    assert_eq!(record.base_url, api.base_url());

    let calls: Vec<(String, String)> = api.calls();
    let expected: Vec<(String, String)> = [
        ("POST", "/v1/files"),
        ("PUT", "/presigned/upload/file-1"),
        ("POST", "/v1/files/file-1/preprocess"),
        ("POST", "/v1/fine-tunes"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(calls, expected);

    let requests = api.server.requests();
    assert_eq!(
        requests[0].text(),
        "purpose=fine-tune&file_name=train.jsonl&file_type=jsonl"
    );
    assert_eq!(
        requests[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {TOGETHER_KEY}").as_str())
    );
    // The presigned URL gets the bytes and its signature, never our key.
    assert_eq!(requests[1].body, std::fs::read(&train).unwrap());
    assert!(requests[1].query().contains("X-Amz-Signature=deadbeef"));
    assert_eq!(requests[1].header("authorization"), None);
    assert_eq!(
        requests[2].header("authorization"),
        Some(format!("Bearer {TOGETHER_KEY}").as_str())
    );
    assert_eq!(
        requests[3].json(),
        json!({
            "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
            "n_epochs": 2,
            "n_checkpoints": 2,
            "batch_size": 8,
            "learning_rate": 1e-4,
            "lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": 0.0, "num_cycles": 0.5}},
            "warmup_ratio": 0.05,
            "random_seed": 7,
            "suffix": "bot",
            "training_type": {"type": "Lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_trainable_modules": "all-linear"},
            "training_method": {"method": "sft", "train_on_inputs": false},
            "training_file": "file-1"
        })
    );

    let saved = std::fs::read_to_string(
        dir.path()
            .join(format!("records/together-{TOGETHER_JOB}.json")),
    )
    .unwrap();
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved["job_id"], json!(TOGETHER_JOB));
    assert_eq!(saved["status"], json!("queued"));
}

#[test]
fn restart_then_watch_reports_events_status_and_downloads_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::together(Outcome::Succeed);
    let train = dataset(dir.path(), "train.jsonl", &[GOOD]);
    let valid = dataset(dir.path(), "valid.jsonl", &[GOOD]);
    let mut s = spec(train);
    s.validation_file = Some(valid);
    let mut cfg = together_cfg(&api);
    cfg.n_evals = Some(2);
    jobs(dir.path())
        .submit(&cfg, &s, &SubmitOptions::default())
        .unwrap();
    assert_eq!(api.state.lock().unwrap().uploads.len(), 2);

    // A new process: nothing but the records directory and the environment.
    let restarted = jobs(dir.path());
    let mut updates = Vec::new();
    let record = restarted
        .watch(&TOGETHER_JOB[..8], &watch_fast(), &mut |u| {
            updates.push(u.clone())
        })
        .unwrap();
    assert_eq!(record.status, JobStatus::Succeeded);
    assert_eq!(record.provider_status, "completed");
    assert_eq!(record.output_model.as_deref(), Some(TOGETHER_OUTPUT));
    assert_eq!(
        (record.steps_completed, record.total_steps),
        (Some(10), Some(10))
    );

    let statuses: Vec<JobStatus> = updates
        .iter()
        .filter_map(|u| match u {
            WatchUpdate::Status(job) => Some(job.status()),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        vec![JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded]
    );
    let kinds: Vec<String> = updates
        .iter()
        .filter_map(|u| match u {
            WatchUpdate::Event(e) => e.kind.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "job_pending",
            "training_start",
            "epoch_complete",
            "job_complete"
        ]
    );

    // Another restart: the events already shown are not shown again.
    let mut again = Vec::new();
    jobs(dir.path())
        .watch(TOGETHER_JOB, &watch_fast(), &mut |u| again.push(u.clone()))
        .unwrap();
    assert!(
        again.iter().all(|u| matches!(u, WatchUpdate::Status(_))),
        "{again:?}"
    );

    let checkpoints: Vec<Checkpoint> = restarted.checkpoints(TOGETHER_JOB).unwrap();
    let names: Vec<String> = checkpoints.iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        names,
        vec![TOGETHER_JOB.to_string(), format!("{TOGETHER_JOB}:5")]
    );

    let out = dir.path().join("adapters");
    let path = restarted
        .download(TOGETHER_JOB, DownloadKind::Adapter, &out, false, false)
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), ADAPTER_BYTES);
    assert!(
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("-adapter.tar.zst"),
        "{}",
        path.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let record = restarted.status(TOGETHER_JOB).unwrap();
    assert_eq!(record.downloads, vec![path.clone()]);

    // A second download does not replace the file unasked; with `force` it does.
    std::fs::write(&path, "edited").unwrap();
    let again = restarted.download(TOGETHER_JOB, DownloadKind::Adapter, &out, false, false);
    match again {
        Err(ProviderError::WouldReplace(e)) => {
            let text = e.to_string();
            assert!(
                text.contains(&path.display().to_string()) && text.contains("--force"),
                "{text}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"edited");
    let forced = restarted
        .download(TOGETHER_JOB, DownloadKind::Adapter, &out, false, true)
        .unwrap();
    assert_eq!(std::fs::read(&forced).unwrap(), ADAPTER_BYTES);
}

#[test]
fn a_job_that_fails_on_the_server_surfaces_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::together(Outcome::Fail);
    let train = dataset(dir.path(), "train.jsonl", &[GOOD]);
    let hosted = jobs(dir.path());
    hosted
        .submit(&together_cfg(&api), &spec(train), &SubmitOptions::default())
        .unwrap();
    match hosted.watch(TOGETHER_JOB, &watch_fast(), &mut |_| {}) {
        Err(ProviderError::JobFailed { id, message, .. }) => {
            assert_eq!(id, TOGETHER_JOB);
            assert_eq!(message, TOGETHER_FAILURE);
        }
        other => panic!("{other:?}"),
    }
    let record = hosted.status(TOGETHER_JOB).unwrap();
    assert_eq!(record.status, JobStatus::Failed);
    assert_eq!(record.provider_status, "error");
    assert_eq!(record.error.as_deref(), Some(TOGETHER_FAILURE));
}

#[test]
fn cancel_then_status() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::together(Outcome::Succeed);
    let train = dataset(dir.path(), "train.jsonl", &[GOOD]);
    let hosted = jobs(dir.path());
    hosted
        .submit(&together_cfg(&api), &spec(train), &SubmitOptions::default())
        .unwrap();
    let record = hosted.cancel(TOGETHER_JOB).unwrap();
    assert_eq!(record.status, JobStatus::Cancelling);
    assert_eq!(record.provider_status, "cancel_requested");
    assert_eq!(
        api.server
            .count("POST", &format!("/v1/fine-tunes/{TOGETHER_JOB}/cancel")),
        1
    );
    let record = jobs(dir.path()).status(TOGETHER_JOB).unwrap();
    assert_eq!(record.status, JobStatus::Cancelled);
    let record = jobs(dir.path())
        .watch(TOGETHER_JOB, &watch_fast(), &mut |_| {})
        .unwrap();
    assert_eq!(record.status, JobStatus::Cancelled);
}

#[test]
fn dataset_failures_are_reported_per_line_before_any_upload() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::together(Outcome::Succeed);
    let train = dataset(
        dir.path(),
        "train.jsonl",
        &[
            GOOD,
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"source":"web"}"#,
            GOOD,
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":0.5}]}"#,
        ],
    );
    match jobs(dir.path()).submit(&together_cfg(&api), &spec(train), &SubmitOptions::default()) {
        Err(ProviderError::Dataset {
            failures, provider, ..
        }) => {
            assert_eq!(provider, "together");
            let lines: Vec<Option<usize>> = failures.iter().map(|f| f.line).collect();
            assert_eq!(lines, vec![Some(2), Some(4)]);
        }
        other => panic!("{other:?}"),
    }
    assert!(api.server.requests().is_empty());
}

#[test]
fn unhonoured_settings_need_acceptance_and_impossible_ones_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::together(Outcome::Succeed);
    let train = dataset(dir.path(), "train.jsonl", &[GOOD]);
    let mut s = spec(train);
    s.max_steps = Some(100);
    s.loss_on = Some(LossOn::LastAssistant);
    match jobs(dir.path()).submit(&together_cfg(&api), &s, &SubmitOptions::default()) {
        Err(e @ ProviderError::UnacceptedWarnings { .. }) => {
            let text = e.to_string();
            assert!(text.contains("max_steps = 100"), "{text}");
            assert!(text.contains("last_assistant"), "{text}");
            assert!(text.contains("accept_warnings = true"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(api.server.requests().is_empty());

    let accepted = SubmitOptions {
        accept_warnings: true,
        ..SubmitOptions::default()
    };
    let record = jobs(dir.path())
        .submit(&together_cfg(&api), &s, &accepted)
        .unwrap();
    assert_eq!(record.accepted_warnings.len(), 2);

    s.lora_alpha = Some(16.5);
    assert!(matches!(
        jobs(dir.path()).submit(&together_cfg(&api), &s, &accepted),
        Err(ProviderError::Mapping { .. })
    ));
}

#[test]
fn openai_multipart_upload_create_watch_and_no_download() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::openai(Outcome::Succeed);
    let train = dataset(dir.path(), "train.jsonl", &[GOOD; 10]);
    let hosted = jobs(dir.path());
    let record = hosted
        .submit(
            &openai_cfg(&api),
            &openai_spec(train.clone()),
            &SubmitOptions::default(),
        )
        .unwrap();
    assert_eq!(record.job_id, OPENAI_JOB);
    assert_eq!(record.status, JobStatus::Queued);
    assert_eq!(record.provider_status, "validating_files");

    let requests = api.server.requests();
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path()),
        ("POST", "/v1/files")
    );
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    let upload = requests[0].text();
    assert!(upload.contains("filename=\"train.jsonl\""), "{upload}");
    assert!(upload.contains(&std::fs::read_to_string(&train).unwrap()));
    assert_eq!(
        (requests[1].method.as_str(), requests[1].path()),
        ("POST", "/v1/fine_tuning/jobs")
    );
    assert_eq!(
        requests[1].json(),
        json!({
            "model": "gpt-4o-mini-2024-07-18",
            "seed": 42,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.8}}},
            "training_file": "file-abc"
        })
    );

    let mut events = Vec::new();
    let record = jobs(dir.path())
        .watch(OPENAI_JOB, &watch_fast(), &mut |u| {
            if let WatchUpdate::Event(e) = u {
                events.push((e.message.clone(), e.step));
            }
        })
        .unwrap();
    assert_eq!(record.status, JobStatus::Succeeded);
    assert_eq!(record.output_model.as_deref(), Some(OPENAI_MODEL));
    assert_eq!(
        events.first().unwrap().0,
        "Validating training file: file-abc"
    );
    assert_eq!(events.last().unwrap().1, Some(10));
    let steps: Vec<Option<u64>> = events.iter().map(|e| e.1).collect();
    assert_eq!(steps, vec![None, None, Some(5), Some(10)]);

    let checkpoints = hosted.checkpoints(OPENAI_JOB).unwrap();
    assert_eq!(checkpoints[0].step, Some(5));
    assert_eq!(checkpoints[0].valid_loss, Some(1.3));
    assert!(matches!(
        hosted.download(OPENAI_JOB, DownloadKind::Adapter, dir.path(), false, false),
        Err(ProviderError::Unsupported { .. })
    ));
}

#[test]
fn openai_failed_job_and_minimum_examples() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::openai(Outcome::Fail);
    let nine = dataset(dir.path(), "nine.jsonl", &[GOOD; 9]);
    match jobs(dir.path()).submit(
        &openai_cfg(&api),
        &openai_spec(nine),
        &SubmitOptions::default(),
    ) {
        Err(ProviderError::Dataset { failures, .. }) => {
            assert_eq!(failures.len(), 1);
            assert!(
                failures[0].message.contains("at least 10"),
                "{}",
                failures[0].message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(api.server.requests().is_empty());

    let train = dataset(dir.path(), "train.jsonl", &[GOOD; 12]);
    let hosted = jobs(dir.path());
    hosted
        .submit(
            &openai_cfg(&api),
            &openai_spec(train),
            &SubmitOptions::default(),
        )
        .unwrap();
    match hosted.watch(OPENAI_JOB, &watch_fast(), &mut |_| {}) {
        Err(ProviderError::JobFailed { message, .. }) => {
            assert_eq!(
                message,
                "The job failed due to an invalid training file. (invalid_training_file)"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(hosted.list().unwrap()[0].status, JobStatus::Failed);
}

#[test]
fn list_local_records_and_remote_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let together = apis::together(Outcome::Succeed);
    let openai = apis::openai(Outcome::Succeed);
    let hosted = jobs(dir.path());
    let train = dataset(dir.path(), "train.jsonl", &[GOOD; 10]);
    hosted
        .submit(
            &together_cfg(&together),
            &spec(train.clone()),
            &SubmitOptions::default(),
        )
        .unwrap();
    hosted
        .submit(
            &openai_cfg(&openai),
            &openai_spec(train),
            &SubmitOptions::default(),
        )
        .unwrap();
    let ids: Vec<String> = jobs(dir.path())
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&TOGETHER_JOB.to_string()) && ids.contains(&OPENAI_JOB.to_string()));
    let remote = hosted
        .list_remote(HostedProvider::OpenAi, Some(&openai.base_url()))
        .unwrap();
    assert_eq!(remote[0].id, OPENAI_JOB);
    assert!(matches!(
        hosted.status("ft-unknown"),
        Err(ProviderError::UnknownJob { .. })
    ));
}

#[test]
fn together_upload_refused_with_401_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = providers_support::MockServer::start(|_| {
        providers_support::Reply::openai_error(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Invalid API key provided",
        )
    });
    let mut cfg = HostedConfig::new(HostedProvider::Together);
    cfg.base_url = Some(format!("{}/v1", server.url()));
    cfg.model = Some("m".into());
    let train = dataset(dir.path(), "train.jsonl", &[GOOD]);
    match jobs(dir.path()).submit(&cfg, &spec(train), &SubmitOptions::default()) {
        Err(ProviderError::Api {
            status: 401,
            retryable: false,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(server.requests().len(), 1);
    assert!(jobs(dir.path()).list().unwrap().is_empty());
}

/// The shipped job files parse, validate their data and map without surprises.
#[test]
fn shipped_hosted_configs_plan_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, provider, warnings) in [
        ("configs/hosted-together.toml", HostedProvider::Together, 0),
        ("configs/hosted-openai.toml", HostedProvider::OpenAi, 6),
    ] {
        let path = root.join(file);
        let (job, written) = JobConfig::load_written(&path, &[]).unwrap();
        let hosted = HostedConfig::from_table(job.hosted.clone().unwrap()).unwrap();
        assert_eq!(hosted.provider, provider);
        let spec = HostedJobSpec::from_job(&job, &written);
        let plan = plan_job(&hosted, &spec).unwrap();
        assert_eq!(
            plan.warnings.len(),
            warnings,
            "{file}: {:#?}",
            plan.warnings
        );
        assert!(
            warnings == 0 || hosted.accept_warnings,
            "{file} must accept its warnings"
        );
        let (_, reports) = HostedJobs::new(JobStore::new(root.join("target/unused")), env())
            .plan(&hosted, &spec, &SubmitOptions::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            reports.iter().all(|r| r.is_ok() && r.examples > 0),
            "{file}"
        );
    }
}

const PAIR: &str = r#"{"input":{"messages":[{"role":"user","content":"Capital of France?"}]},"preferred_output":[{"role":"assistant","content":"Paris."}],"non_preferred_output":[{"role":"assistant","content":"Lyon."}]}"#;

/// A DPO job file's spec: `train.method = "dpo"` and `[dpo]` as the hosted mapping reads them.
fn dpo_spec(dir: &Path, train: &Path, dpo: &str) -> HostedJobSpec {
    let text = format!(
        "[model]\nsource = \"org/model\"\n[data]\ntrain = \"{}\"\n[train]\nmethod = \"dpo\"\nepochs = 1\nmicro_batch_size = 2\n[dpo]\n{dpo}\n[output]\ndir = \"out\"\n",
        train.display()
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    let (job, written) = JobConfig::load_written(&path, &[]).unwrap();
    HostedJobSpec::from_job(&job, &written)
}

#[test]
fn dpo_jobs_upload_the_pair_shape_and_send_each_providers_dpo_method() {
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(dir.path(), "pairs.jsonl", &[PAIR; 10]);
    let spec = dpo_spec(
        dir.path(),
        &train,
        "beta = 0.2\nsft_weight = 0.5\nnormalize_by_length = true",
    );
    assert!(spec.unmapped.is_empty(), "{:?}", spec.unmapped);
    let api = apis::together(Outcome::Succeed);
    jobs(dir.path())
        .submit(&together_cfg(&api), &spec, &SubmitOptions::default())
        .unwrap();
    let requests = api.server.requests();
    assert_eq!(requests[1].body, std::fs::read(&train).unwrap());
    assert_eq!(
        requests[3].json(),
        json!({
            "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
            "n_epochs": 1,
            "n_checkpoints": 2,
            "batch_size": 2,
            "suffix": "bot",
            "training_method": {"method": "dpo", "dpo_beta": 0.2, "rpo_alpha": 0.5, "dpo_normalize_logratios_by_length": true},
            "training_file": "file-1"
        })
    );

    // OpenAI: beta only; an SFT term it cannot take is an error before any upload.
    let api = apis::openai(Outcome::Succeed);
    let refused = jobs(dir.path()).submit(&openai_cfg(&api), &spec, &SubmitOptions::default());
    match refused {
        Err(ProviderError::Mapping { errors, .. }) => assert_eq!(errors.len(), 2, "{errors:?}"),
        other => panic!("{other:?}"),
    }
    assert!(api.server.requests().is_empty());
    let spec = dpo_spec(dir.path(), &train, "beta = 0.2");
    jobs(dir.path())
        .submit(&openai_cfg(&api), &spec, &SubmitOptions::default())
        .unwrap();
    let requests = api.server.requests();
    assert!(requests[0]
        .text()
        .contains(&std::fs::read_to_string(&train).unwrap()));
    assert_eq!(
        requests[1].json(),
        json!({
            "model": "gpt-4o-mini-2024-07-18",
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.8, "beta": 0.2}}},
            "training_file": "file-abc"
        })
    );
}

#[test]
fn a_hosted_dpo_job_refuses_pairs_in_another_shape_before_upload() {
    let dir = tempfile::tempdir().unwrap();
    let trl = r#"{"prompt":"Capital of France?","chosen":"Paris.","rejected":"Lyon."}"#;
    let train = dataset(dir.path(), "pairs.jsonl", &[trl; 10]);
    let spec = dpo_spec(dir.path(), &train, "loss = \"sigmoid\"");
    let api = apis::together(Outcome::Succeed);
    match jobs(dir.path()).submit(&together_cfg(&api), &spec, &SubmitOptions::default()) {
        Err(ProviderError::Dataset { failures, .. }) => {
            assert_eq!(failures.len(), 10);
            assert!(failures[0].message.contains("dpo-openai"), "{failures:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(api.server.requests().is_empty());
}
