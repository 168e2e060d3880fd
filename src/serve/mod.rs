//! `lora-train serve`: the registry over HTTP (axum on tokio), a worker that runs queued jobs
//! as child processes, and the dashboard. Loopback by default; bound anywhere else, every
//! route requires a bearer token. Bodies are size-limited, errors are JSON with the status
//! that fits, and the registry keeps one writer connection in this process.

mod actions;
mod api;
mod dashboard;
mod db;
mod error;
mod posted;
mod process;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;

pub use api::{inside, log_tail, ROUTES};
pub use db::Db;
pub use error::ApiError;
pub use worker::{WorkerConfig, WorkerHandle, JOB_ID_VAR};

/// The largest request body accepted (a job file or an eval file).
pub const BODY_LIMIT: usize = 1 << 20;

/// What `lora-train serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: IpAddr,
    pub port: u16,
    /// The bearer token every request must carry; required off loopback.
    pub token: Option<String>,
    /// The registry file.
    pub db: PathBuf,
    /// Each job's files: `JOBS/ID/job.toml` and its log.
    pub jobs_root: PathBuf,
    /// Relative paths in posted jobs resolve against this folder.
    pub cwd: PathBuf,
    /// The binary that runs jobs (this one).
    pub exe: PathBuf,
}

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    db: Db,
    cfg: Arc<ServeConfig>,
    worker: WorkerHandle,
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bound off loopback without a token.
    #[error(
        "binding {0} exposes the API beyond this machine: give --token (or set \
         LORA_TRAIN_TOKEN), or bind 127.0.0.1"
    )]
    TokenRequired(IpAddr),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A server bound to its port, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: AppState,
    worker_thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Opens the registry, marks jobs a previous server left running as interrupted, binds
    /// the port and starts the worker. Call inside a tokio runtime.
    pub async fn bind(cfg: ServeConfig) -> Result<Server, ServeError> {
        if !cfg.host.is_loopback() && cfg.token.is_none() {
            return Err(ServeError::TokenRequired(cfg.host));
        }
        let db = Db::open(&cfg.db)?;
        let recover_db = db.clone();
        let interrupted = tokio::task::spawn_blocking(move || worker::recover(&recover_db))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        if interrupted > 0 {
            tracing::warn!(
                "{interrupted} job(s) were running when the server stopped: marked failed \
                 (interrupted); POST /api/jobs/ID/start resumes one"
            );
        }
        let addr = SocketAddr::new(cfg.host, cfg.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let handle = WorkerHandle::default();
        let worker_cfg = WorkerConfig {
            exe: cfg.exe.clone(),
            jobs_root: cfg.jobs_root.clone(),
        };
        let (worker_db, worker_handle) = (db.clone(), handle.clone());
        let worker_thread = std::thread::Builder::new()
            .name("job-worker".into())
            .spawn(move || worker::run(worker_db, worker_cfg, worker_handle))?;
        Ok(Server {
            listener,
            state: AppState {
                db,
                cfg: Arc::new(cfg),
                worker: handle,
            },
            worker_thread: Some(worker_thread),
        })
    }

    /// The address it listens on (the port, when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops the worker (its job checkpoints and is
    /// marked interrupted).
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let app = app(self.state.clone());
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        self.state.worker.stop();
        if let Some(t) = self.worker_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        served.map_err(ServeError::Io)
    }
}

/// The whole application: API, dashboard, limits and auth.
pub fn app(state: AppState) -> Router {
    let token = state.cfg.token.clone();
    Router::new()
        .merge(api::router())
        .merge(dashboard::router())
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(token, require_token))
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

/// Every route needs `Authorization: Bearer TOKEN` (or the dashboard's cookie) when the
/// server has a token.
async fn require_token(
    State(token): State<Option<String>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("lora_train_token="))
        .next();
    // A browser signs in once with `/?token=TOKEN`, which sets the cookie.
    let query = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(String::from);
    let given = bearer.or(cookie).map(String::from);
    if given.is_some_and(|g| same(g.trim(), &token)) {
        return next.run(request).await;
    }
    if query.as_deref().is_some_and(|q| same(q, &token)) {
        let mut response = next.run(request).await;
        let cookie = format!("lora_train_token={token}; HttpOnly; SameSite=Strict; Path=/");
        if let Ok(v) = header::HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
        return response;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this server requires `Authorization: Bearer TOKEN`",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// axum's own rejections (a body over the limit, a bad path) as the API's JSON errors.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let keep = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/json")
                || v.starts_with("text/html")
                || v.starts_with("text/event-stream")
        });
    if !(status.is_client_error() || status.is_server_error()) || keep {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&body).trim().to_string();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        message = format!("request body over {} bytes", BODY_LIMIT);
    } else if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    ApiError::new(status, code, message).into_response()
}
