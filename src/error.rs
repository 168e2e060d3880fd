//! Typed errors of the library. Each variant names the file, line, key or operation at
//! fault, so that the binary can print one readable line, and callers that must tell one
//! failure from another match on a variant instead of reading a message.

use std::path::PathBuf;

/// Errors raised by the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An output path already holds something the command did not write (a user's folder or
    /// file, or another kind of artifact); `--force` replaces it.
    #[error("{}: {why}; give --force to replace it", .path.display())]
    WouldReplace { path: PathBuf, why: String },

    /// A fresh run was asked for in an output folder that holds an earlier run's checkpoints.
    #[error("{}: holds {checkpoints} checkpoint(s) of an earlier run; give --resume to continue it, or --overwrite to remove that run's files and start over", .dir.display())]
    EarlierRun { dir: PathBuf, checkpoints: usize },

    /// A run would write over a file or folder in its output folder that is not its own (a
    /// user's `job.toml`, a foreign `adapter/`); neither `--resume` nor `--overwrite` touches it.
    #[error("{}: {why}; a run writes there, so move it or choose another output.dir", .path.display())]
    RunFileTaken { path: PathBuf, why: String },

    /// A model file (config.json, safetensors, GGUF) is missing, corrupt or inconsistent.
    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },

    /// A field of a model config (`config.json`, or a GGUF metadata key) holds a value the
    /// model cannot be built with: `field` is the name as that file spells it.
    #[error("{path}: `{field}` {msg}")]
    BadModelConfig {
        path: PathBuf,
        field: String,
        msg: String,
    },

    /// The model's architecture is not one this crate implements.
    #[error("{path}: unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        supported: String,
    },

    /// The tokenizer could not be built or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),

    /// A dataset line is invalid.
    #[error("{path}:{line}: {msg}")]
    Dataset {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    /// A job key is invalid: the job file and where in it the key was written (a line or a
    /// `--set` argument; neither for a job built in code), the dotted key, and what is wrong.
    #[error("{}{msg}", place(.file.as_deref(), .at))]
    JobKey {
        file: Option<PathBuf>,
        at: KeyAt,
        key: String,
        msg: String,
    },

    /// The job file is not valid TOML, or its table does not make a job.
    #[error("{}{}: {msg}", .file.display(), .line.map(|l| format!(":{l}")).unwrap_or_default())]
    JobFile {
        file: PathBuf,
        line: Option<usize>,
        msg: String,
    },

    /// A setting that is not a job key is invalid: an environment switch, a device, a dtype.
    #[error("{0}")]
    Config(String),

    /// A feature, input or combination this build does not support, and why or what to do
    /// instead.
    #[error("{what}: {why}")]
    Unsupported { what: String, why: String },

    /// A tensor, buffer or list has the wrong shape or length for the operation named.
    #[error("{what}: {got}, expected {expected}")]
    Shape {
        what: String,
        expected: String,
        got: String,
    },

    /// A size the user asked for (`what`, with its value) is beyond what the model allows
    /// (`limit`, with where that bound comes from).
    #[error("{what} is more than {limit}")]
    TooLarge { what: String, limit: String },

    /// `lora.init_adapter` is not the adapter the job describes: the adapter file at `path`
    /// says `field` = `adapter`, the job's `key` = `job`.
    #[error("{path}: {field} = {adapter}, but the job's {key} = {job}; make them agree")]
    AdapterMismatch {
        path: PathBuf,
        field: &'static str,
        adapter: String,
        key: &'static str,
        job: String,
    },

    /// A conversation gives the loss nothing to train on.
    #[error("{0}")]
    NoTargets(String),

    /// The run's estimated peak memory exceeds what `place` (a device, or empty for the host)
    /// has left; `msg` gives the breakdown and settings that would fit.
    #[error("{place}{msg}")]
    DoesNotFit { place: String, msg: String },

    /// A value of ours could not be serialized as JSON for `what`.
    #[error("{what}: cannot write JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// Training produced a NaN or infinite loss or gradient.
    #[error("non-finite value: {0}")]
    NonFinite(String),

    /// A stop request (Ctrl-C, SIGTERM) cut the work named short.
    #[error("stopped during {0}")]
    Interrupted(String),

    /// A checkpoint's `trainer_state.json` disagrees with the run resuming from it: `field`
    /// holds a value the run could not have written.
    #[error("{}: `{field}` {msg}", .path.display())]
    CheckpointState {
        path: PathBuf,
        field: &'static str,
        msg: String,
    },

    /// The training data's content changed since the checkpoint a run resumes from.
    #[error("{}: {msg}", .path.display())]
    DataChanged { path: PathBuf, msg: String },

    /// A dataset leaves the run nothing to learn or measure: every example was dropped, or
    /// every reply it would train on is empty.
    #[error("{}: {msg}", .path.display())]
    NoUsableData { path: PathBuf, msg: String },

    /// A model could not be had from the Hugging Face Hub (`crate::hub`): `kind` tells the
    /// failures apart, the message says what happened and what to do about it.
    #[error("{msg}")]
    Hub { kind: HubFailure, msg: String },

    /// An internal invariant broke (a poisoned lock, a value asked for before it was made,
    /// a step with nothing to differentiate): a bug rather than bad input.
    #[error("{0}")]
    Msg(String),
}

/// Why a Hub download failed ([`Error::Hub`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubFailure {
    /// No such repo (or a private one the token cannot see).
    RepoNotFound,
    /// The repo has no such branch, tag or commit.
    RevisionNotFound,
    /// A gated repo whose licence the token's account has not accepted (or no token).
    Gated,
    /// A file the model needs is not in the repo.
    FileNotFound,
    /// The repo holds no safetensors weights (`.bin` checkpoints are not loaded).
    NoSafetensors,
    /// A download was cut off and could not be resumed; the partial file is kept for next time.
    Interrupted,
    /// A downloaded file is not what the Hub announced (size or SHA-256).
    Corrupt,
    /// `HF_HUB_OFFLINE` forbids the network and the cache does not hold the model.
    NotCached,
    /// The Hub could not be reached.
    Unreachable,
    /// The Hub (or `HF_ENDPOINT`) answered something else: an error status or a reply that is
    /// not the resolve protocol's.
    BadReply,
}

/// Where a job key was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAt {
    /// A 1-based line of the job file: the key's own, or its nearest enclosing table's.
    Line(usize),
    /// The `--set section.key=value` argument that set it.
    Set(String),
    /// Nowhere known: a required key that is missing, or a job built in code.
    Unknown,
}

/// The `file:line: ` (or `file: --set arg: `, or `file: `) prefix of a [`Error::JobKey`].
fn place(file: Option<&std::path::Path>, at: &KeyAt) -> String {
    match (file, at) {
        (None, _) => String::new(),
        (Some(f), KeyAt::Line(line)) => format!("{}:{line}: ", f.display()),
        (Some(f), KeyAt::Set(arg)) => format!("{}: --set {arg}: ", f.display()),
        (Some(f), KeyAt::Unknown) => format!("{}: ", f.display()),
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An error about job key `key` with no file to point at (a job built in code).
    pub fn job_key(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::JobKey {
            file: None,
            at: KeyAt::Unknown,
            key: key.into(),
            msg: msg.into(),
        }
    }

    /// `what` is not supported, because of (or do instead) `why`.
    pub fn unsupported(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Unsupported {
            what: what.into(),
            why: why.into(),
        }
    }

    /// `what` expected `expected` and got `got`.
    pub fn shape(
        what: impl Into<String>,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Display,
    ) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    /// A bad value of model-config field `field` in `path`.
    pub fn model_field(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::BadModelConfig {
            path: path.into(),
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// A model-file error on `path`.
    pub fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// The one crossing from this crate's errors into Candle's, for code that runs inside a
/// Candle op or backward closure (which must return `candle_core::Error`): a Candle error goes
/// back as it was, any other travels wrapped with its message unchanged, so `?` is enough.
impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            e => candle_core::Error::Wrapped(Box::new(e)),
        }
    }
}

/// Runs third-party code that may panic on input it should have refused (a parser, a template
/// engine) and turns such a panic into `Err` with its message; the panic is not printed, so the
/// caller's error is the one line the user sees. Our own code returns errors instead.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    quiet_panic_hook();
    QUIET_PANICS.with(|q| q.set(q.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(q.get() - 1));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panicked".to_string())
    })
}

thread_local! {
    /// How many [`catch_panic`] calls this thread is inside.
    static QUIET_PANICS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Wraps the panic hook once: panics inside [`catch_panic`] are not printed, all others are.
fn quiet_panic_hook() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET_PANICS.try_with(|q| q.get()).unwrap_or(0) == 0 {
                previous(info);
            }
        }));
    });
}
