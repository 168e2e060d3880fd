//! Deployments: every deploy, rollback and archive of a model version on a target (a vLLM
//! server), with who asked and what happened. The newest `active` row of a target and LoRA
//! name is what the target serves; a rollback reads the row before it.

use rusqlite::{params, Row};
use serde::Serialize;

use super::{now, Registry, Result};

/// What a deployment row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentAction {
    Deploy,
    Rollback,
    Archive,
}

impl DeploymentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentAction::Deploy => "deploy",
            DeploymentAction::Rollback => "rollback",
            DeploymentAction::Archive => "archive",
        }
    }
}

/// A deployment to record.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub model: String,
    pub version: i64,
    pub target: String,
    pub lora_name: String,
    pub action: DeploymentAction,
    /// `active` when the target took it, `failed` when it refused.
    pub status: &'static str,
    pub config: serde_json::Value,
    pub notes: Option<String>,
    pub who: Option<String>,
    pub error: Option<String>,
}

/// A deployment row.
#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub id: i64,
    pub model: String,
    pub version: i64,
    pub target: String,
    pub lora_name: String,
    pub action: String,
    pub status: String,
    pub config: serde_json::Value,
    pub notes: Option<String>,
    pub who: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
}

const COLUMNS: &str = "id, model, version, target, lora_name, action, status, config_json, \
    notes, who, error, created_at";

fn from_row(r: &Row) -> rusqlite::Result<Deployment> {
    let config: String = r.get(7)?;
    Ok(Deployment {
        id: r.get(0)?,
        model: r.get(1)?,
        version: r.get(2)?,
        target: r.get(3)?,
        lora_name: r.get(4)?,
        action: r.get(5)?,
        status: r.get(6)?,
        config: serde_json::from_str(&config).unwrap_or_default(),
        notes: r.get(8)?,
        who: r.get(9)?,
        error: r.get(10)?,
        created_at: r.get(11)?,
    })
}

impl Registry {
    /// Records a deployment action. An `active` one replaces the target's active row for the
    /// same LoRA name (which becomes `replaced`, or `rolled_back` for a rollback).
    pub fn record_deployment(&self, d: &NewDeployment) -> Result<Deployment> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        if d.status == "active" {
            let old = match d.action {
                DeploymentAction::Rollback => "rolled_back",
                _ => "replaced",
            };
            tx.execute(
                "UPDATE deployments SET status = ?1 WHERE target = ?2 AND lora_name = ?3 \
                 AND status = 'active'",
                params![old, d.target, d.lora_name],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.execute(
            "INSERT INTO deployments (model, version, target, lora_name, action, status, \
             config_json, notes, who, error, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                d.model,
                d.version,
                d.target,
                d.lora_name,
                d.action.as_str(),
                d.status,
                d.config.to_string(),
                d.notes,
                d.who,
                d.error,
                now()
            ],
        )
        .map_err(|e| self.err(e))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(|e| self.err(e))?;
        self.deployment(id)
    }

    /// Deployment `id`.
    pub fn deployment(&self, id: i64) -> Result<Deployment> {
        self.one(
            &format!("SELECT {COLUMNS} FROM deployments WHERE id = ?1"),
            [id],
            from_row,
            "deployment",
            id,
        )
    }

    /// Every deployment, newest first.
    pub fn deployments(&self) -> Result<Vec<Deployment>> {
        self.all(
            &format!("SELECT {COLUMNS} FROM deployments ORDER BY id DESC"),
            [],
            from_row,
        )
    }

    /// The version a target served under `lora_name` before deployment `id`: the newest
    /// earlier successful deploy or rollback of that name with another version.
    pub fn previous_deployment(&self, id: i64) -> Result<Option<Deployment>> {
        let d = self.deployment(id)?;
        self.first(
            &format!(
                "SELECT {COLUMNS} FROM deployments WHERE target = ?1 AND lora_name = ?2 \
                     AND id < ?3 AND status != 'failed' AND action != 'archive' \
                     AND NOT (model = ?4 AND version = ?5) ORDER BY id DESC LIMIT 1"
            ),
            params![d.target, d.lora_name, id, d.model, d.version],
            from_row,
        )
    }

    /// The number of active deployments (the overview's "deployed models").
    pub fn active_deployments(&self) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM deployments WHERE status = 'active'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }
}
