//! `lora-train deploy NAME[@VERSION|:ALIAS] --target URL`: load a registered version's adapter
//! on a running vLLM server and record the deployment; `lora-train deploy rollback ID` puts
//! back what the target served before deployment ID; `--print-command` prints the `vllm serve`
//! line that starts a server with the adapter instead. The vLLM key, when the server has one,
//! comes from `VLLM_API_KEY`.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use lora_train::deploy::{DeployRequest, VllmClient};
use lora_train::registry::{Deployment, Registry, VersionRef};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub command: Option<DeployCommand>,

    /// The version to deploy: NAME (its newest), NAME@VERSION or NAME:ALIAS.
    #[arg(value_name = "NAME[@VERSION|:ALIAS]", required = true)]
    pub model: Option<String>,

    /// The vLLM server, e.g. http://127.0.0.1:8000 (started with --enable-lora and
    /// VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
    #[arg(long, value_name = "URL", required_unless_present = "print_command")]
    pub target: Option<String>,

    /// The name the adapter is served under [default: the model's name].
    #[arg(long, value_name = "N")]
    pub lora_name: Option<String>,

    /// A note kept with the deployment.
    #[arg(long, value_name = "TEXT")]
    pub notes: Option<String>,

    /// Print the `vllm serve` command that serves this version, for a server not running yet,
    /// and deploy nothing.
    #[arg(long, conflicts_with = "target")]
    pub print_command: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Unload deployment ID's adapter and load the version the target served before it.
    Rollback {
        #[arg(value_name = "DEPLOYMENT_ID")]
        id: i64,
    },
}

fn registry() -> anyhow::Result<Registry> {
    let Some(path) = super::record::db_path() else {
        bail!("deployments are recorded in the registry: drop --no-registry");
    };
    Registry::open(&path).with_context(|| format!("registry {}", path.display()))
}

fn who() -> Option<String> {
    std::env::var("USER").ok().filter(|u| !u.is_empty())
}

pub fn run(a: &DeployArgs) -> anyhow::Result<()> {
    let reg = registry()?;
    if let Some(DeployCommand::Rollback { id }) = &a.command {
        let d = lora_train::deploy::rollback(&reg, &VllmClient::from_env(), *id, who())?;
        println!("rolled back deployment {id}: {}", describe(&d));
        return Ok(());
    }
    let Some(spec) = &a.model else {
        bail!("give the version to deploy: NAME, NAME@VERSION or NAME:ALIAS");
    };
    let r: VersionRef = spec.parse()?;
    let v = reg.resolve_version(&r)?;
    if a.print_command {
        let name = a.lora_name.clone().unwrap_or_else(|| v.name.clone());
        println!("{}", lora_train::deploy::serve_command(&v, &name)?);
        return Ok(());
    }
    let Some(target) = &a.target else {
        bail!("give --target URL, or --print-command");
    };
    let req = DeployRequest {
        target: target.clone(),
        lora_name: a.lora_name.clone(),
        notes: a.notes.clone(),
        who: who(),
    };
    let d = lora_train::deploy::deploy(&reg, &VllmClient::from_env(), &v, &req)?;
    println!("deployed {}", describe(&d));
    Ok(())
}

fn describe(d: &Deployment) -> String {
    format!(
        "{}@{} as `{}` on {} (deployment {})",
        d.model, d.version, d.lora_name, d.target, d.id
    )
}
