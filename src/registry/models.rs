//! Models: numbered versions of a named adapter (or a provider's fine-tuned model), each with
//! the job that made it and the version it started from, and aliases (`production`,
//! `staging`) that point at one version each and move, as MLflow's and W&B's registries
//! replaced fixed stages with aliases.

use std::str::FromStr;

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{now, Registry, RegistryError, Result};

/// A model version row, with the aliases that point at it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: i64,
    pub base_model: String,
    pub adapter_path: Option<String>,
    pub adapter_sha256: Option<String>,
    pub remote_model: Option<String>,
    pub job_id: Option<i64>,
    pub parent_version: Option<i64>,
    /// Measures recorded for this version (validation loss, tokens/s, win rate ...).
    pub metrics: serde_json::Map<String, serde_json::Value>,
    pub aliases: Vec<String>,
    pub created_at: String,
}

/// A model version to register.
#[derive(Debug, Clone, Default)]
pub struct NewModelVersion {
    pub name: String,
    pub base_model: String,
    pub adapter_path: Option<String>,
    pub adapter_sha256: Option<String>,
    pub remote_model: Option<String>,
    pub job_id: Option<i64>,
    pub parent_version: Option<i64>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

/// A model with its newest version and its aliases.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub latest_version: i64,
    pub versions: i64,
    pub base_model: String,
    /// alias → version.
    pub aliases: std::collections::BTreeMap<String, i64>,
}

/// `NAME`, `NAME@VERSION` or `NAME:ALIAS`: which version of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRef {
    pub name: String,
    pub which: Which,
}

/// The version part of a [`VersionRef`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Latest,
    Version(i64),
    Alias(String),
}

impl FromStr for VersionRef {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            RegistryError::Invalid(format!(
                "`{s}` is not a model reference: NAME, NAME@VERSION or NAME:ALIAS"
            ))
        };
        let (name, which) = if let Some((name, v)) = s.split_once('@') {
            (name, Which::Version(v.parse().map_err(|_| bad())?))
        } else if let Some((name, alias)) = s.split_once(':') {
            check_alias(alias)?;
            (name, Which::Alias(alias.to_string()))
        } else {
            (s, Which::Latest)
        };
        if name.is_empty() {
            return Err(bad());
        }
        Ok(VersionRef {
            name: name.to_string(),
            which,
        })
    }
}

impl VersionRef {
    /// `name:alias`.
    pub fn from_alias(name: &str, alias: &str) -> Result<Self> {
        check_alias(alias)?;
        Ok(VersionRef {
            name: name.to_string(),
            which: Which::Alias(alias.to_string()),
        })
    }
}

/// Alias names: letters, digits, `-` and `_`, not all digits (which would read as a version).
pub fn check_alias(alias: &str) -> Result<()> {
    let ok = !alias.is_empty()
        && alias.len() <= 64
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !alias.chars().all(|c| c.is_ascii_digit());
    match ok {
        true => Ok(()),
        false => Err(RegistryError::Invalid(format!(
            "`{alias}` is not an alias name: letters, digits, - and _, not only digits"
        ))),
    }
}

const VERSION_COLUMNS: &str = "name, version, base_model, adapter_path, adapter_sha256, \
    remote_model, job_id, parent_version, metrics_json, created_at";

fn version_from_row(r: &Row) -> rusqlite::Result<ModelVersion> {
    let metrics: String = r.get(8)?;
    Ok(ModelVersion {
        name: r.get(0)?,
        version: r.get(1)?,
        base_model: r.get(2)?,
        adapter_path: r.get(3)?,
        adapter_sha256: r.get(4)?,
        remote_model: r.get(5)?,
        job_id: r.get(6)?,
        parent_version: r.get(7)?,
        metrics: serde_json::from_str(&metrics).unwrap_or_default(),
        aliases: Vec::new(),
        created_at: r.get(9)?,
    })
}

impl Registry {
    /// Registers the next version of `new.name` and returns it.
    pub fn register_model(&self, new: &NewModelVersion) -> Result<ModelVersion> {
        if new.name.trim().is_empty() {
            return Err(RegistryError::Invalid("a model needs a name".into()));
        }
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let version: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE name = ?1",
                [&new.name],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let metrics = serde_json::Value::Object(new.metrics.clone()).to_string();
        tx.execute(
            "INSERT INTO models (name, version, base_model, adapter_path, adapter_sha256, \
             remote_model, job_id, parent_version, metrics_json, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                new.name,
                version,
                new.base_model,
                new.adapter_path,
                new.adapter_sha256,
                new.remote_model,
                new.job_id,
                new.parent_version,
                metrics,
                now()
            ],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        self.model_version(&new.name, version)
    }

    /// Every model, by name.
    pub fn models(&self) -> Result<Vec<ModelSummary>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT m.name, MAX(m.version), COUNT(*), \
                 (SELECT base_model FROM models WHERE name = m.name ORDER BY version DESC LIMIT 1) \
                 FROM models m GROUP BY m.name ORDER BY m.name",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ModelSummary {
                    name: r.get(0)?,
                    latest_version: r.get(1)?,
                    versions: r.get(2)?,
                    base_model: r.get(3)?,
                    aliases: Default::default(),
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|mut m| {
                m.aliases = self.aliases(&m.name)?.into_iter().collect();
                Ok(m)
            })
            .collect()
    }

    /// The versions of model `name`, newest first; an unknown name is not found.
    pub fn model_versions(&self, name: &str) -> Result<Vec<ModelVersion>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM models WHERE name = ?1 ORDER BY version DESC"
            ))
            .map_err(|e| self.err(e))?;
        let mut versions = stmt
            .query_map([name], version_from_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        if versions.is_empty() {
            return Err(not_found(name));
        }
        let aliases = self.aliases(name)?;
        for v in &mut versions {
            v.aliases = aliases
                .iter()
                .filter(|(_, to)| *to == v.version)
                .map(|(a, _)| a.clone())
                .collect();
        }
        Ok(versions)
    }

    /// Version `version` of model `name`.
    pub fn model_version(&self, name: &str, version: i64) -> Result<ModelVersion> {
        let mut v = self
            .conn
            .query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM models WHERE name = ?1 AND version = ?2"),
                params![name, version],
                version_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| not_found(&format!("{name}@{version}")))?;
        v.aliases = self
            .aliases(name)?
            .into_iter()
            .filter(|(_, to)| *to == version)
            .map(|(a, _)| a)
            .collect();
        Ok(v)
    }

    /// The version a reference names.
    pub fn resolve_version(&self, r: &VersionRef) -> Result<ModelVersion> {
        let version = match &r.which {
            Which::Version(v) => *v,
            Which::Latest => self.model_versions(&r.name)?[0].version,
            Which::Alias(alias) => self
                .aliases(&r.name)?
                .into_iter()
                .find(|(a, _)| a == alias)
                .map(|(_, v)| v)
                .ok_or_else(|| not_found(&format!("{}:{alias}", r.name)))?,
        };
        self.model_version(&r.name, version)
    }

    /// Points `alias` of model `name` at `version` (which must exist); returns the version it
    /// pointed at before.
    pub fn set_alias(&self, name: &str, alias: &str, version: i64) -> Result<Option<i64>> {
        check_alias(alias)?;
        self.model_version(name, version)?;
        let before = self
            .aliases(name)?
            .into_iter()
            .find(|(a, _)| a == alias)
            .map(|(_, v)| v);
        self.conn
            .execute(
                "INSERT INTO aliases (model, alias, version, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (model, alias) DO UPDATE SET version = ?3, updated_at = ?4",
                params![name, alias, version, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(before)
    }

    /// The aliases of model `name`: (alias, version), by alias.
    pub fn aliases(&self, name: &str) -> Result<Vec<(String, i64)>> {
        self.all(
            "SELECT alias, version FROM aliases WHERE model = ?1 ORDER BY alias",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// The newest version whose adapter is at `path` (how an eval candidate is recognised).
    pub fn version_with_adapter(&self, path: &str) -> Result<Option<ModelVersion>> {
        self.first(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM models WHERE adapter_path = ?1 \
                     ORDER BY id DESC LIMIT 1"
            ),
            [path],
            version_from_row,
        )
    }

    /// Adds measures to a version's metrics (replacing those of the same name).
    pub fn add_model_metrics(
        &self,
        name: &str,
        version: i64,
        metrics: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let mut v = self.model_version(name, version)?;
        v.metrics.extend(metrics.clone());
        self.conn
            .execute(
                "UPDATE models SET metrics_json = ?1 WHERE name = ?2 AND version = ?3",
                params![
                    serde_json::Value::Object(v.metrics).to_string(),
                    name,
                    version
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn not_found(id: &str) -> RegistryError {
    RegistryError::NotFound {
        what: "model",
        id: id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::registry;
    use super::*;

    fn version(name: &str, adapter: &str) -> NewModelVersion {
        NewModelVersion {
            name: name.into(),
            base_model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            adapter_path: Some(adapter.into()),
            ..Default::default()
        }
    }

    #[test]
    fn versions_count_up_and_aliases_move() {
        let (_dir, reg) = registry();
        assert_eq!(
            reg.register_model(&version("pirate", "/a/1"))
                .unwrap()
                .version,
            1
        );
        assert_eq!(
            reg.register_model(&version("pirate", "/a/2"))
                .unwrap()
                .version,
            2
        );
        assert_eq!(
            reg.register_model(&version("other", "/b/1"))
                .unwrap()
                .version,
            1
        );
        assert_eq!(reg.set_alias("pirate", "production", 1).unwrap(), None);
        assert_eq!(reg.set_alias("pirate", "production", 2).unwrap(), Some(1));
        let r: VersionRef = "pirate:production".parse().unwrap();
        assert_eq!(reg.resolve_version(&r).unwrap().version, 2);
        let latest: VersionRef = "pirate".parse().unwrap();
        assert_eq!(
            reg.resolve_version(&latest).unwrap().adapter_path.unwrap(),
            "/a/2"
        );
        let versions = reg.model_versions("pirate").unwrap();
        assert_eq!(versions[0].aliases, vec!["production".to_string()]);
        assert!(versions[1].aliases.is_empty());
        let models = reg.models().unwrap();
        assert_eq!(models.len(), 2);
        assert_eq!(models[1].aliases["production"], 2);
        assert!(matches!(
            reg.set_alias("pirate", "production", 9).unwrap_err(),
            RegistryError::NotFound { .. }
        ));
        assert!(reg.set_alias("pirate", "12", 1).is_err());
        assert!("pirate@x".parse::<VersionRef>().is_err());
        assert_eq!(
            reg.version_with_adapter("/a/1").unwrap().unwrap().version,
            1
        );
    }
}
