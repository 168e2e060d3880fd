//! OpenAI's fine-tuning API (openai-python `resources/fine_tuning/jobs`, `resources/files.py`).
//!
//! Files go up as `multipart/form-data` to `POST /files` with `purpose=fine-tune`; jobs
//! live under `/fine_tuning/jobs` with `events` (newest first, `metrics` events carry
//! `data.step`/`data.total_steps`/`data.train_loss`) and `checkpoints`. OpenAI does not
//! hand out the trained weights, so `download` is refused with that reason.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{
    json_str, Checkpoint, DownloadKind, EventLevel, FineTuneApi, HostedProvider, JobEvent,
    JobStatus, RemoteJob,
};
use crate::net::secret::ApiKey;
use crate::providers::error::{ProviderError, Result};
use crate::providers::http::{
    display_path, form_encode, Auth, HttpRequest, HttpSettings, Transport,
};

/// OpenAI's status names mapped to ours (types/fine_tuning/fine_tuning_job.py).
pub fn map_status(status: &str) -> JobStatus {
    match status {
        "validating_files" | "queued" => JobStatus::Queued,
        "running" => JobStatus::Running,
        "succeeded" => JobStatus::Succeeded,
        "failed" => JobStatus::Failed,
        "cancelled" => JobStatus::Cancelled,
        _ => JobStatus::Unknown,
    }
}

/// The OpenAI client.
#[derive(Debug)]
pub struct OpenAiFineTune {
    base_url: String,
    transport: Transport,
}

/// A multipart body with text fields and one file; returns (body, content type).
fn multipart(
    fields: &[(&str, &str)],
    file_field: &str,
    file_name: &str,
    bytes: &[u8],
) -> (Vec<u8>, String) {
    let boundary = format!(
        "lora-train-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let mut body = Vec::with_capacity(bytes.len() + 512);
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    let quoted = file_name.replace(['"', '\r', '\n'], "_");
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; filename=\"{quoted}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (body, format!("multipart/form-data; boundary={boundary}"))
}

impl OpenAiFineTune {
    pub fn new(base_url: String, key: ApiKey, settings: HttpSettings) -> Self {
        OpenAiFineTune {
            base_url,
            transport: Transport::new("openai", Auth::Bearer(key), settings),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    fn job(&self, path: &str, value: &Value) -> Result<RemoteJob> {
        let id = json_str(value, "id").ok_or_else(|| ProviderError::Decode {
            provider: "openai".to_string(),
            path: display_path(path),
            message: "a fine-tuning job without `id`".to_string(),
        })?;
        let provider_status = json_str(value, "status").unwrap_or_default();
        let error = value.get("error").filter(|e| e.is_object()).map(|e| {
            let message = json_str(e, "message").unwrap_or_else(|| "no message".to_string());
            match json_str(e, "code") {
                Some(code) if !code.is_empty() => format!("{message} ({code})"),
                _ => message,
            }
        });
        Ok(RemoteJob {
            id,
            status: Some(map_status(&provider_status)),
            provider_status,
            model: json_str(value, "model"),
            output_model: json_str(value, "fine_tuned_model"),
            created_at: json_str(value, "created_at"),
            error: error.map(|e| self.transport.scrub(&e)),
            steps_completed: None,
            total_steps: None,
            epochs_completed: None,
            trained_tokens: value.get("trained_tokens").and_then(Value::as_u64),
        })
    }

    fn get_json(&self, path: &str) -> Result<Value> {
        self.transport.send_json(&HttpRequest::get(self.url(path)))
    }
}

fn event(value: &Value, index: usize) -> JobEvent {
    let data = value.get("data").cloned().unwrap_or(Value::Null);
    let message = json_str(value, "message").unwrap_or_default();
    JobEvent {
        id: json_str(value, "id").unwrap_or_else(|| format!("{index}|{message}")),
        created_at: json_str(value, "created_at"),
        level: EventLevel::parse(value.get("level").and_then(Value::as_str)),
        kind: json_str(value, "type").map(|t| t.to_ascii_lowercase()),
        message,
        step: data.get("step").and_then(Value::as_u64),
        total_steps: data.get("total_steps").and_then(Value::as_u64),
        train_loss: data.get("train_loss").and_then(Value::as_f64),
    }
}

impl FineTuneApi for OpenAiFineTune {
    fn provider(&self) -> HostedProvider {
        HostedProvider::OpenAi
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    fn upload(&self, path: &Path) -> Result<String> {
        let bytes = std::fs::read(path).map_err(|e| ProviderError::io(path, e))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "train.jsonl".to_string());
        tracing::info!(provider = "openai", file = %file_name, bytes = bytes.len(), "uploading");
        let (body, content_type) =
            multipart(&[("purpose", "fine-tune")], "file", &file_name, &bytes);
        let request = HttpRequest {
            method: "POST",
            url: self.url("/files"),
            headers: Vec::new(),
            body: Some((body, content_type)),
            with_auth: true,
        };
        let value: Value = self.transport.send_json(&request)?;
        json_str(&value, "id").ok_or_else(|| ProviderError::Decode {
            provider: "openai".to_string(),
            path: "/files".to_string(),
            message: "a file object without `id`".to_string(),
        })
    }

    fn create(&self, body: &Value) -> Result<RemoteJob> {
        let path = "/fine_tuning/jobs";
        let value: Value = self
            .transport
            .send_json(&HttpRequest::post_json(self.url(path), body))?;
        self.job(path, &value)
    }

    fn retrieve(&self, id: &str) -> Result<RemoteJob> {
        let path = format!("/fine_tuning/jobs/{id}");
        let value = self.get_json(&path)?;
        self.job(&path, &value)
    }

    fn list(&self) -> Result<Vec<RemoteJob>> {
        let mut jobs = Vec::new();
        let mut after: Option<String> = None;
        // Pages of 100, up to 1000 jobs: enough for a listing, bounded for a broken server.
        for _ in 0..10 {
            let mut query = vec![("limit", "100")];
            if let Some(a) = after.as_deref() {
                query.push(("after", a));
            }
            let path = format!("/fine_tuning/jobs?{}", form_encode(&query));
            let value = self.get_json(&path)?;
            let page = value
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for job in &page {
                jobs.push(self.job(&path, job)?);
            }
            let more = value
                .get("has_more")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            match (more, jobs.last()) {
                (true, Some(last)) if !page.is_empty() => after = Some(last.id.clone()),
                _ => break,
            }
        }
        Ok(jobs)
    }

    fn cancel(&self, id: &str) -> Result<RemoteJob> {
        let path = format!("/fine_tuning/jobs/{id}/cancel");
        let value: Value = self
            .transport
            .send_json(&HttpRequest::post_empty(self.url(&path)))?;
        self.job(&path, &value)
    }

    fn events(&self, id: &str) -> Result<Vec<JobEvent>> {
        let value = self.get_json(&format!("/fine_tuning/jobs/{id}/events?limit=100"))?;
        let mut events: Vec<JobEvent> = value
            .get("data")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, e)| {
                        let mut ev = event(e, i);
                        ev.message = self.transport.scrub(&ev.message);
                        ev
                    })
                    .collect()
            })
            .unwrap_or_default();
        // The API lists newest first.
        events.reverse();
        Ok(events)
    }

    fn checkpoints(&self, id: &str) -> Result<Vec<Checkpoint>> {
        let value = self.get_json(&format!("/fine_tuning/jobs/{id}/checkpoints"))?;
        Ok(value
            .get("data")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|c| {
                        let metrics = c.get("metrics").cloned().unwrap_or(Value::Null);
                        Checkpoint {
                            name: json_str(c, "fine_tuned_model_checkpoint")
                                .or_else(|| json_str(c, "id"))
                                .unwrap_or_default(),
                            step: c.get("step_number").and_then(Value::as_u64),
                            created_at: json_str(c, "created_at"),
                            kind: json_str(c, "object"),
                            train_loss: metrics.get("train_loss").and_then(Value::as_f64),
                            valid_loss: metrics.get("valid_loss").and_then(Value::as_f64),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn download(
        &self,
        _id: &str,
        _kind: DownloadKind,
        _dest_dir: &Path,
        _force: bool,
        _progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<PathBuf> {
        Err(ProviderError::Unsupported {
            provider: "openai".to_string(),
            message: "OpenAI does not release fine-tuned weights; use the fine-tuned model by name through the API".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_ours() {
        assert_eq!(map_status("validating_files"), JobStatus::Queued);
        assert_eq!(map_status("succeeded"), JobStatus::Succeeded);
        assert_eq!(map_status("failed"), JobStatus::Failed);
        assert_eq!(map_status("paused"), JobStatus::Unknown);
    }

    #[test]
    fn multipart_layout() {
        let (body, content_type) =
            multipart(&[("purpose", "fine-tune")], "file", "t.jsonl", b"{}\n");
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
        )));
        assert!(text.contains(
            "filename=\"t.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{}\n\r\n"
        ));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }

    #[test]
    fn metrics_events_carry_progress() {
        let e = event(
            &serde_json::json!({"object": "fine_tuning.job.event", "id": "ftevent-1", "created_at": 1, "level": "info", "message": "Step 5/10: training loss=0.5", "type": "metrics", "data": {"step": 5, "total_steps": 10, "train_loss": 0.5}}),
            0,
        );
        assert_eq!(
            (e.step, e.total_steps, e.train_loss),
            (Some(5), Some(10), Some(0.5))
        );
        assert_eq!(e.kind.as_deref(), Some("metrics"));
    }
}
