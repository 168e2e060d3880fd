//! Fake Together and OpenAI fine-tuning APIs on the loopback mock server, answering
//! with the paths, bodies, status names and error shapes of the real services
//! (together-python types/finetune.py and filemanager.py, openai-python types/fine_tuning).

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::{MockServer, Recorded, Reply};

/// How a fake job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeed,
    Fail,
}

#[derive(Debug)]
pub struct FakeState {
    pub outcome: Outcome,
    /// Status polls answered so far (the job advances one phase per poll).
    pub polls: usize,
    /// The phase the last status reply showed (0 queued, 1 running, 2 ended, 9 cancelled).
    pub shown: usize,
    pub cancelled: bool,
    pub files: usize,
    /// Bytes received by the presigned PUT, per file id.
    pub uploads: Vec<(String, Vec<u8>)>,
}

pub struct FakeApi {
    pub server: MockServer,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeApi {
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.url())
    }

    /// (method, path) of every request, in order.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.server
            .requests()
            .iter()
            .map(|r| (r.method.clone(), r.path().to_string()))
            .collect()
    }
}

fn state(outcome: Outcome) -> Arc<Mutex<FakeState>> {
    Arc::new(Mutex::new(FakeState {
        outcome,
        polls: 0,
        shown: 0,
        cancelled: false,
        files: 0,
        uploads: Vec::new(),
    }))
}

pub const TOGETHER_JOB: &str = "ft-3f1c9a2e-7b4d-4e0a-9c1b-5d6e7f8a9b0c";
pub const TOGETHER_OUTPUT: &str = "user/Meta-Llama-3.1-8B-Instruct-Reference-bot-3f1c9a2e";
pub const ADAPTER_BYTES: &[u8] = b"(zstd tar of adapter_model.safetensors and adapter_config.json)";
pub const TOGETHER_FAILURE: &str = "Training failed: CUDA out of memory on rank 0";

/// Phase of the fake job after `polls` status requests.
fn phase(s: &FakeState) -> usize {
    if s.cancelled {
        return 9;
    }
    s.polls.min(2)
}

/// Answers a status poll: the job moves one phase further each time.
fn poll(s: &mut FakeState) {
    s.shown = phase(s);
    s.polls += 1;
}

fn together_job(s: &FakeState) -> Value {
    let (status, steps) = match phase(s) {
        9 => ("cancelled", 5),
        0 => ("queued", 0),
        1 => ("running", 5),
        _ if s.outcome == Outcome::Fail => ("error", 5),
        _ => ("completed", 10),
    };
    json!({
        "id": TOGETHER_JOB,
        "status": status,
        "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
        "model_output_name": TOGETHER_OUTPUT,
        "training_file": "file-1",
        "created_at": "2025-01-02T03:04:05.000Z",
        "updated_at": "2025-01-02T03:14:05.000Z",
        "n_epochs": 2,
        "total_steps": 10,
        "steps_completed": steps,
        "epochs_completed": steps / 5,
        "queue_depth": 0,
        "training_type": {"type": "Lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_trainable_modules": "all-linear"},
        "events": []
    })
}

fn together_events(s: &FakeState) -> Value {
    let mut events = vec![
        json!({"object": "fine-tune-event", "created_at": "2025-01-02T03:04:06Z", "level": "Info", "message": "Fine tune request created", "type": "JOB_PENDING", "hash": "h1"}),
    ];
    let p = s.shown;
    if p >= 1 && p != 9 || (p == 9 && s.polls >= 2) {
        events.push(json!({"object": "fine-tune-event", "created_at": "2025-01-02T03:05:00Z", "level": "info", "message": "Training started for model meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", "type": "training_start", "hash": "h2"}));
        events.push(json!({"object": "fine-tune-event", "created_at": "2025-01-02T03:09:00Z", "level": "Info", "message": "Epoch completed, at step 5", "type": "EPOCH_COMPLETE", "step": 5, "total_steps": 10, "hash": "h3"}));
    }
    if p == 2 {
        events.push(match s.outcome {
            Outcome::Succeed => json!({"object": "fine-tune-event", "created_at": "2025-01-02T03:14:00Z", "level": "Info", "message": "Job finished", "type": "JOB_COMPLETE", "step": 10, "total_steps": 10, "hash": "h4"}),
            Outcome::Fail => json!({"object": "fine-tune-event", "created_at": "2025-01-02T03:10:00Z", "level": "Error", "message": TOGETHER_FAILURE, "type": "JOB_ERROR", "hash": "h4"}),
        });
    }
    if p == 9 {
        events.push(json!({"object": "fine-tune-event", "created_at": "2025-01-02T03:11:00Z", "level": "Info", "message": "Job cancelled by user", "type": "CANCEL_REQUESTED", "hash": "h5"}));
    }
    json!({"object": "list", "data": events})
}

fn together_route(req: &Recorded, state: &Mutex<FakeState>) -> Reply {
    let mut s = state.lock().unwrap();
    let path = req.path().to_string();
    let job_path = format!("/v1/fine-tunes/{TOGETHER_JOB}");
    match (req.method.as_str(), path.as_str()) {
        ("POST", "/v1/files") => {
            let form = req.text();
            if !(form.contains("purpose=fine-tune")
                && form.contains("file_type=jsonl")
                && form.contains("file_name="))
            {
                return Reply::openai_error(
                    400,
                    "invalid_request_error",
                    None,
                    "missing form fields",
                );
            }
            s.files += 1;
            let id = format!("file-{}", s.files);
            Reply::empty(302)
                .header(
                    "location",
                    &format!(
                        "{}/presigned/upload/{id}?X-Amz-Signature=deadbeef&X-Amz-Expires=300",
                        req.origin()
                    ),
                )
                .header("x-together-file-id", &id)
        }
        ("PUT", p) if p.starts_with("/presigned/upload/") => {
            let id = p.trim_start_matches("/presigned/upload/").to_string();
            s.uploads.push((id, req.body.clone()));
            Reply::empty(200)
        }
        ("POST", p) if p.starts_with("/v1/files/") && p.ends_with("/preprocess") => {
            let id = p
                .trim_start_matches("/v1/files/")
                .trim_end_matches("/preprocess");
            Reply::json(
                200,
                json!({"id": id, "object": "file", "created_at": 1735787045, "filename": "train.jsonl", "bytes": 1234, "purpose": "fine-tune", "type": "jsonl", "FileType": "jsonl", "LineCount": 0, "Processed": true}),
            )
        }
        ("POST", "/v1/fine-tunes") => Reply::json(200, {
            let mut job = together_job(&s);
            job["status"] = json!("pending");
            job
        }),
        ("GET", "/v1/fine-tunes") => {
            Reply::json(200, json!({"object": "list", "data": [together_job(&s)]}))
        }
        ("GET", p) if p == job_path => {
            let job = together_job(&s);
            poll(&mut s);
            Reply::json(200, job)
        }
        ("GET", p) if p == format!("{job_path}/events") => Reply::json(200, together_events(&s)),
        ("POST", p) if p == format!("{job_path}/cancel") => {
            s.cancelled = true;
            s.shown = 9;
            let mut job = together_job(&s);
            job["status"] = json!("cancel_requested");
            Reply::json(200, job)
        }
        ("GET", p) if p == format!("{job_path}/checkpoints") => Reply::json(
            200,
            json!({"data": [
                {"step": 5, "path": "s3://bucket/ckpt-5", "created_at": "2025-01-02T03:09:00Z", "checkpoint_type": "Intermediate"},
                {"step": 10, "path": "s3://bucket/final", "created_at": "2025-01-02T03:14:00Z", "checkpoint_type": "Final"}
            ]}),
        ),
        ("GET", "/v1/finetune/download") => {
            if req.query().contains(&format!("ft_id={TOGETHER_JOB}"))
                && req.query().contains("checkpoint=adapter")
            {
                Reply::bytes(200, "application/octet-stream", ADAPTER_BYTES)
            } else {
                Reply::openai_error(400, "invalid_request_error", None, "bad download query")
            }
        }
        _ => Reply::openai_error(
            404,
            "invalid_request_error",
            None,
            &format!("no route {} {}", req.method, path),
        ),
    }
}

/// A fake Together API at `{url}/v1`.
pub fn together(outcome: Outcome) -> FakeApi {
    let state = state(outcome);
    let server = MockServer::start({
        let state = state.clone();
        move |req| together_route(req, &state)
    });
    FakeApi { server, state }
}

pub const OPENAI_JOB: &str = "ftjob-abc123";
pub const OPENAI_MODEL: &str = "ft:gpt-4o-mini-2024-07-18:org::AbC123";

fn openai_job(s: &FakeState) -> Value {
    let status = match phase(s) {
        9 => "cancelled",
        0 => "validating_files",
        1 => "running",
        _ if s.outcome == Outcome::Fail => "failed",
        _ => "succeeded",
    };
    let mut job = json!({
        "object": "fine_tuning.job",
        "id": OPENAI_JOB,
        "model": "gpt-4o-mini-2024-07-18",
        "created_at": 1735787045,
        "finished_at": null,
        "fine_tuned_model": null,
        "organization_id": "org-123",
        "result_files": [],
        "status": status,
        "validation_file": null,
        "training_file": "file-abc",
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.8},
        "trained_tokens": null,
        "error": null,
        "seed": 42,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.8}}}
    });
    if status == "succeeded" {
        job["fine_tuned_model"] = json!(OPENAI_MODEL);
        job["trained_tokens"] = json!(5120);
    }
    if status == "failed" {
        job["error"] = json!({"code": "invalid_training_file", "message": "The job failed due to an invalid training file.", "param": "training_file"});
    }
    job
}

fn openai_events(s: &FakeState) -> Value {
    let mut events = vec![
        json!({"object": "fine_tuning.job.event", "id": "ftevent-1", "created_at": 1735787046, "level": "info", "message": "Validating training file: file-abc", "type": "message", "data": {}}),
    ];
    if s.shown >= 1 {
        events.push(json!({"object": "fine_tuning.job.event", "id": "ftevent-2", "created_at": 1735787100, "level": "info", "message": "Fine-tuning job started", "type": "message", "data": null}));
        events.push(json!({"object": "fine_tuning.job.event", "id": "ftevent-3", "created_at": 1735787200, "level": "info", "message": "Step 5/10: training loss=1.20", "type": "metrics", "data": {"step": 5, "train_loss": 1.2, "total_steps": 10, "train_mean_token_accuracy": 0.7}}));
    }
    if s.shown == 2 && s.outcome == Outcome::Succeed {
        events.push(json!({"object": "fine_tuning.job.event", "id": "ftevent-4", "created_at": 1735787300, "level": "info", "message": "Step 10/10: training loss=0.80", "type": "metrics", "data": {"step": 10, "train_loss": 0.8, "total_steps": 10}}));
    }
    // The API lists the newest first.
    events.reverse();
    json!({"object": "list", "data": events, "has_more": false})
}

fn openai_route(req: &Recorded, state: &Mutex<FakeState>) -> Reply {
    let mut s = state.lock().unwrap();
    let path = req.path().to_string();
    let job_path = format!("/v1/fine_tuning/jobs/{OPENAI_JOB}");
    match (req.method.as_str(), path.as_str()) {
        ("POST", "/v1/files") => {
            let is_multipart = req
                .header("content-type")
                .is_some_and(|t| t.starts_with("multipart/form-data; boundary="));
            let body = req.text();
            if !is_multipart
                || !body.contains("name=\"purpose\"\r\n\r\nfine-tune\r\n")
                || !body.contains("name=\"file\"; filename=\"")
            {
                return Reply::openai_error(
                    400,
                    "invalid_request_error",
                    None,
                    "expected multipart with purpose and file",
                );
            }
            s.files += 1;
            let id = format!("file-abc{}", s.files);
            s.uploads.push((id, req.body.clone()));
            Reply::json(
                200,
                json!({"id": "file-abc", "object": "file", "bytes": req.body.len(), "created_at": 1735787040, "filename": "train.jsonl", "purpose": "fine-tune", "status": "processed"}),
            )
        }
        ("POST", "/v1/fine_tuning/jobs") => Reply::json(200, openai_job(&s)),
        ("GET", "/v1/fine_tuning/jobs") => Reply::json(
            200,
            json!({"object": "list", "data": [openai_job(&s)], "has_more": false}),
        ),
        ("GET", p) if p == job_path => {
            let job = openai_job(&s);
            poll(&mut s);
            Reply::json(200, job)
        }
        ("GET", p) if p == format!("{job_path}/events") => Reply::json(200, openai_events(&s)),
        ("POST", p) if p == format!("{job_path}/cancel") => {
            s.cancelled = true;
            s.shown = 9;
            Reply::json(200, openai_job(&s))
        }
        ("GET", p) if p == format!("{job_path}/checkpoints") => Reply::json(
            200,
            json!({"object": "list", "data": [
            {"object": "fine_tuning.job.checkpoint", "id": "ftckpt-1", "created_at": 1735787250, "fine_tuned_model_checkpoint": "ft:gpt-4o-mini-2024-07-18:org::AbC123:ckpt-step-5", "fine_tuning_job_id": OPENAI_JOB, "metrics": {"step": 5, "train_loss": 1.2, "valid_loss": 1.3}, "step_number": 5}
        ], "has_more": false}),
        ),
        _ => Reply::openai_error(
            404,
            "invalid_request_error",
            None,
            &format!("Invalid URL ({} {})", req.method, path),
        ),
    }
}

/// A fake OpenAI API at `{url}/v1`.
pub fn openai(outcome: Outcome) -> FakeApi {
    let state = state(outcome);
    let server = MockServer::start({
        let state = state.clone();
        move |req| openai_route(req, &state)
    });
    FakeApi { server, state }
}
