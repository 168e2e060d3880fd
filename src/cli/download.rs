//! `lora-train download org/name[@revision]`: fetches a model from the Hugging Face Hub into the
//! Hub cache (`config.json`, the tokenizer files, the safetensors weights) and prints its
//! snapshot folder, so that later runs load it offline (`HF_HUB_OFFLINE=1`).

use anyhow::bail;
use clap::Args;
use lora_train::hub::{self, HubSettings, HubSpec};

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The Hub repo: org/name, or org/name@revision (a branch, tag or commit).
    #[arg(value_name = "ORG/NAME[@REVISION]")]
    pub model: String,
}

/// Runs the command.
pub fn run(a: DownloadArgs) -> anyhow::Result<()> {
    let Some(spec) = HubSpec::parse(&a.model) else {
        bail!(
            "`{}` is not a Hub repo id: give org/name or org/name@revision",
            a.model
        );
    };
    let snapshot = hub::snapshot(&spec, &HubSettings::from_env())?;
    if snapshot.downloaded == 0 {
        tracing::info!("{spec}: already in the Hub cache");
    } else {
        tracing::info!(
            "{spec}: downloaded {}",
            indicatif::HumanBytes(snapshot.downloaded)
        );
    }
    println!("{}", snapshot.dir.display());
    Ok(())
}
