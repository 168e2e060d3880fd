-- The registry's first schema. Timestamps are RFC 3339 UTC text; JSON columns hold objects.

CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    backend       TEXT NOT NULL CHECK (backend IN ('local', 'together', 'openai')),
    method        TEXT NOT NULL CHECK (method IN ('sft', 'dpo')),
    config_toml   TEXT NOT NULL,
    config_path   TEXT,
    status        TEXT NOT NULL CHECK (status IN
                      ('queued', 'preparing', 'training', 'completed', 'failed',
                       'cancelling', 'cancelled')),
    -- Queued jobs the worker may start (0: held until POST /api/jobs/{id}/start).
    autostart     INTEGER NOT NULL DEFAULT 1,
    -- The next start continues from the output folder's newest checkpoint.
    resume        INTEGER NOT NULL DEFAULT 0,
    progress      REAL NOT NULL DEFAULT 0,
    current_step  INTEGER,
    total_steps   INTEGER,
    epoch         REAL,
    latest_loss   REAL,
    output_dir    TEXT,
    remote_id     TEXT,
    error         TEXT,
    pid           INTEGER,
    pid_start     INTEGER,
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT,
    updated_at    TEXT NOT NULL
);
CREATE INDEX jobs_status ON jobs (status);

CREATE TABLE job_metrics (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step    INTEGER NOT NULL,
    key     TEXT NOT NULL,
    value   REAL NOT NULL,
    PRIMARY KEY (job_id, step, key)
) WITHOUT ROWID;

CREATE TABLE models (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL,
    version         INTEGER NOT NULL,
    base_model      TEXT NOT NULL,
    adapter_path    TEXT,
    adapter_sha256  TEXT,
    -- A hosted job's result: the provider's model name.
    remote_model    TEXT,
    job_id          INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    parent_version  INTEGER,
    metrics_json    TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE aliases (
    model       TEXT NOT NULL,
    alias       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES models (name, version)
);

CREATE TABLE evaluations (
    id               INTEGER PRIMARY KEY,
    job_id           INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    name             TEXT NOT NULL,
    output_dir       TEXT,
    report_json      TEXT,
    candidates_json  TEXT NOT NULL DEFAULT '[]',
    judge            TEXT,
    created_at       TEXT NOT NULL
);

CREATE TABLE comparisons (
    id             INTEGER PRIMARY KEY,
    evaluation_id  INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    candidate_a    TEXT NOT NULL,
    candidate_b    TEXT NOT NULL,
    -- The registered model versions the candidates are, when known ("name@version").
    model_a        TEXT,
    model_b        TEXT,
    wins           INTEGER NOT NULL,
    ties           INTEGER NOT NULL,
    losses         INTEGER NOT NULL,
    win_rate       REAL NOT NULL,
    ci_low         REAL,
    ci_high        REAL,
    created_at     TEXT NOT NULL
);

CREATE TABLE deployments (
    id           INTEGER PRIMARY KEY,
    model        TEXT NOT NULL,
    version      INTEGER NOT NULL,
    target       TEXT NOT NULL,
    lora_name    TEXT NOT NULL,
    action       TEXT NOT NULL CHECK (action IN ('deploy', 'rollback', 'archive')),
    status       TEXT NOT NULL CHECK (status IN ('active', 'replaced', 'failed', 'rolled_back')),
    config_json  TEXT NOT NULL DEFAULT '{}',
    notes        TEXT,
    who          TEXT,
    error        TEXT,
    created_at   TEXT NOT NULL
);

CREATE TABLE datasets (
    id          INTEGER PRIMARY KEY,
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    format      TEXT,
    rows        INTEGER,
    provenance  TEXT,
    created_at  TEXT NOT NULL,
    UNIQUE (path, sha256)
);
