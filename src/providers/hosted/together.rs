//! Together's fine-tuning API. Upload follows together-python `filemanager.py`
//! (`UploadManager.upload` with `redirect=True`): `POST /files` answers `302` with a presigned URL
//! and `X-Together-File-Id`, the bytes go there by `PUT` (without our key), then `POST
//! /files/{id}/preprocess`. Jobs live under `/fine-tunes`; the adapter comes from `GET
//! /finetune/download`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{
    json_str, json_u64, safe_file_name, Checkpoint, DownloadKind, EventLevel, FineTuneApi,
    HostedProvider, JobEvent, JobStatus, RemoteJob,
};
use crate::fsutil::{check_new_file, temp_path_for};
use crate::net::secret::ApiKey;
use crate::providers::error::{ProviderError, Result};
use crate::providers::http::{
    display_path, form_encode, resolve_location, Auth, HttpRequest, HttpSettings, Transport,
};

/// Together's status names mapped to ours (types/finetune.py `FinetuneJobStatus`).
pub fn map_status(status: &str) -> JobStatus {
    match status.to_ascii_lowercase().as_str() {
        "pending" | "queued" => JobStatus::Queued,
        "running" | "compressing" | "uploading" => JobStatus::Running,
        "cancel_requested" => JobStatus::Cancelling,
        "cancelled" => JobStatus::Cancelled,
        "error" | "user_error" => JobStatus::Failed,
        "completed" => JobStatus::Succeeded,
        _ => JobStatus::Unknown,
    }
}

/// The Together client.
#[derive(Debug)]
pub struct TogetherFineTune {
    base_url: String,
    transport: Transport,
}

impl TogetherFineTune {
    pub fn new(base_url: String, key: ApiKey, settings: HttpSettings) -> Self {
        TogetherFineTune {
            base_url,
            transport: Transport::new("together", Auth::Bearer(key), settings),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    fn decode_error(&self, path: &str, message: impl Into<String>) -> ProviderError {
        ProviderError::Decode {
            provider: "together".to_string(),
            path: display_path(path),
            message: message.into(),
        }
    }

    fn job(&self, path: &str, value: &Value) -> Result<RemoteJob> {
        let id = json_str(value, "id")
            .ok_or_else(|| self.decode_error(path, "a fine-tune without `id`"))?;
        let provider_status = json_str(value, "status").unwrap_or_default();
        let error = match value.get("error") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("message").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        Ok(RemoteJob {
            id,
            status: Some(map_status(&provider_status)),
            provider_status,
            model: json_str(value, "model"),
            output_model: json_str(value, "model_output_name")
                .or_else(|| json_str(value, "output_name")),
            created_at: json_str(value, "created_at"),
            error: error.map(|e| self.transport.scrub(&e)),
            steps_completed: json_u64(value, "steps_completed"),
            total_steps: json_u64(value, "total_steps"),
            epochs_completed: json_u64(value, "epochs_completed"),
            trained_tokens: json_u64(value, "token_count"),
        })
    }

    fn get_json(&self, path: &str) -> Result<Value> {
        self.transport.send_json(&HttpRequest::get(self.url(path)))
    }
}

fn event(value: &Value, index: usize) -> JobEvent {
    let message = json_str(value, "message").unwrap_or_default();
    let created_at = json_str(value, "created_at");
    let kind = json_str(value, "type").map(|t| t.to_ascii_lowercase());
    let id = json_str(value, "hash")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            format!(
                "{}|{}|{}|{index}",
                created_at.as_deref().unwrap_or(""),
                kind.as_deref().unwrap_or(""),
                message
            )
        });
    JobEvent {
        id,
        created_at,
        level: EventLevel::parse(value.get("level").and_then(Value::as_str)),
        kind,
        message,
        step: json_u64(value, "step"),
        total_steps: json_u64(value, "total_steps"),
        train_loss: value.get("train_loss").and_then(Value::as_f64),
    }
}

impl FineTuneApi for TogetherFineTune {
    fn provider(&self) -> HostedProvider {
        HostedProvider::Together
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    fn upload(&self, path: &Path) -> Result<String> {
        let file_type = match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => "jsonl",
            Some("parquet") => "parquet",
            _ => {
                return Err(ProviderError::Config(format!(
                    "{}: Together takes .jsonl or .parquet files",
                    path.display()
                )))
            }
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "train.jsonl".to_string());
        let bytes = std::fs::read(path).map_err(|e| ProviderError::io(path, e))?;

        let files_url = self.url("/files");
        let form = form_encode(&[
            ("purpose", "fine-tune"),
            ("file_name", &file_name),
            ("file_type", file_type),
        ]);
        let request = HttpRequest {
            method: "POST",
            url: files_url.clone(),
            headers: Vec::new(),
            body: Some((
                form.into_bytes(),
                "application/x-www-form-urlencoded".to_string(),
            )),
            with_auth: true,
        };
        let reply = self.transport.send(&request)?;
        if reply.status != 302 {
            return Err(self.decode_error(
                &files_url,
                format!(
                    "expected a 302 redirect to the upload URL, got HTTP {}",
                    reply.status
                ),
            ));
        }
        let location = reply
            .header("location")
            .ok_or_else(|| self.decode_error(&files_url, "302 without a Location header"))?;
        let file_id = reply.header("x-together-file-id").ok_or_else(|| {
            self.decode_error(&files_url, "302 without an X-Together-File-Id header")
        })?;
        tracing::info!(provider = "together", file = %file_name, bytes = bytes.len(), file_id = %file_id, "uploading");

        // The presigned URL authorizes the upload itself; our key must not go there.
        let put = HttpRequest {
            method: "PUT",
            url: resolve_location(&files_url, &location),
            headers: Vec::new(),
            body: Some((bytes, String::new())),
            with_auth: false,
        };
        let stored = self.transport.send(&put)?;
        if !(200..300).contains(&stored.status) {
            return Err(
                self.decode_error(&put.url, format!("upload answered HTTP {}", stored.status))
            );
        }
        let processed: Value = self.transport.send_json(&HttpRequest::post_empty(
            self.url(&format!("/files/{file_id}/preprocess")),
        ))?;
        Ok(json_str(&processed, "id").unwrap_or(file_id))
    }

    fn create(&self, body: &Value) -> Result<RemoteJob> {
        let path = "/fine-tunes";
        let value: Value = self
            .transport
            .send_json(&HttpRequest::post_json(self.url(path), body))?;
        self.job(path, &value)
    }

    fn retrieve(&self, id: &str) -> Result<RemoteJob> {
        let path = format!("/fine-tunes/{id}");
        let value = self.get_json(&path)?;
        self.job(&path, &value)
    }

    fn list(&self) -> Result<Vec<RemoteJob>> {
        let path = "/fine-tunes";
        let value = self.get_json(path)?;
        value
            .get("data")
            .and_then(Value::as_array)
            .map(|jobs| jobs.iter().map(|j| self.job(path, j)).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    fn cancel(&self, id: &str) -> Result<RemoteJob> {
        let path = format!("/fine-tunes/{id}/cancel");
        let value: Value = self
            .transport
            .send_json(&HttpRequest::post_empty(self.url(&path)))?;
        self.job(&path, &value)
    }

    fn events(&self, id: &str) -> Result<Vec<JobEvent>> {
        let value = self.get_json(&format!("/fine-tunes/{id}/events"))?;
        Ok(value
            .get("data")
            .and_then(Value::as_array)
            .map(|events| {
                events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        let mut ev = event(e, i);
                        ev.message = self.transport.scrub(&ev.message);
                        ev
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn checkpoints(&self, id: &str) -> Result<Vec<Checkpoint>> {
        let value = self.get_json(&format!("/fine-tunes/{id}/checkpoints"))?;
        let mut checkpoints: Vec<Checkpoint> = value
            .get("data")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|c| {
                        let step = json_u64(c, "step");
                        let kind = json_str(c, "checkpoint_type");
                        // together-python `_parse_raw_checkpoints`: intermediate ones are `{id}:{step}`.
                        let intermediate = kind
                            .as_deref()
                            .is_some_and(|k| k.to_ascii_lowercase().contains("intermediate"));
                        Checkpoint {
                            name: match (intermediate, step) {
                                (true, Some(step)) => format!("{id}:{step}"),
                                _ => id.to_string(),
                            },
                            step,
                            created_at: json_str(c, "created_at"),
                            kind,
                            train_loss: c.get("train_loss").and_then(Value::as_f64),
                            valid_loss: c.get("valid_loss").and_then(Value::as_f64),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        checkpoints.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(checkpoints)
    }

    fn download(
        &self,
        id: &str,
        kind: DownloadKind,
        dest_dir: &Path,
        force: bool,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<PathBuf> {
        let job = self.retrieve(id)?;
        let selector = match kind {
            DownloadKind::Adapter => ("checkpoint", "adapter".to_string()),
            DownloadKind::Merged => ("checkpoint", "merged".to_string()),
            DownloadKind::Step(step) => ("checkpoint_step", step.to_string()),
        };
        let query = form_encode(&[("ft_id", id), (selector.0, &selector.1)]);
        let mut stream = self.transport.open_stream(&HttpRequest::get(
            self.url(&format!("/finetune/download?{query}")),
        ))?;
        let total = stream
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let extension = match stream.header("content-type") {
            Some(t) if t.to_ascii_lowercase().contains("x-tar") => "tar.gz",
            _ => "tar.zst",
        };
        let stem = safe_file_name(job.output_model.as_deref().unwrap_or(id));
        let name = match kind {
            DownloadKind::Adapter => format!("{stem}-adapter.{extension}"),
            DownloadKind::Merged => format!("{stem}-merged.{extension}"),
            DownloadKind::Step(step) => format!("{stem}-checkpoint-{step}.{extension}"),
        };
        std::fs::create_dir_all(dest_dir).map_err(|e| ProviderError::io(dest_dir, e))?;
        let target = dest_dir.join(name);
        check_new_file(&target, force)?;
        let temp = temp_path_for(&target);
        let copied = (|| -> std::io::Result<u64> {
            let mut file = std::fs::File::create(&temp)?;
            let mut buffer = vec![0u8; 1 << 20];
            let mut done = 0u64;
            loop {
                let n = stream.reader.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                file.write_all(&buffer[..n])?;
                done += n as u64;
                progress(done, total);
            }
            file.sync_all()?;
            Ok(done)
        })();
        let done = match copied {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(ProviderError::Transport {
                    provider: "together".to_string(),
                    method: "GET".to_string(),
                    path: "/finetune/download".to_string(),
                    message: format!("download interrupted: {e}"),
                });
            }
        };
        if let Some(total) = total.filter(|&t| t != done) {
            let _ = std::fs::remove_file(&temp);
            return Err(ProviderError::Transport {
                provider: "together".to_string(),
                method: "GET".to_string(),
                path: "/finetune/download".to_string(),
                message: format!("received {done} bytes of {total}"),
            });
        }
        std::fs::rename(&temp, &target).map_err(|e| ProviderError::io(&target, e))?;
        tracing::info!(provider = "together", job = %id, bytes = done, path = %target.display(), "downloaded");
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_ours() {
        assert_eq!(map_status("pending"), JobStatus::Queued);
        assert_eq!(map_status("compressing"), JobStatus::Running);
        assert_eq!(map_status("cancel_requested"), JobStatus::Cancelling);
        assert_eq!(map_status("user_error"), JobStatus::Failed);
        assert_eq!(map_status("completed"), JobStatus::Succeeded);
        assert_eq!(map_status("mystery"), JobStatus::Unknown);
    }

    #[test]
    fn events_parse_case_insensitively() {
        let e = event(
            &serde_json::json!({"object": "fine-tune-event", "created_at": "t", "level": "Error", "message": "OOM", "type": "JOB_ERROR", "hash": ""}),
            3,
        );
        assert_eq!(e.level, EventLevel::Error);
        assert_eq!(e.kind.as_deref(), Some("job_error"));
        assert_eq!(e.id, "t|job_error|OOM|3");
    }
}
