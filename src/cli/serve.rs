//! `lora-train serve`: the registry's REST API, the job worker and the dashboard on one port,
//! until Ctrl-C or SIGTERM (which stop the running job with a checkpoint first).

use std::io::Write;
use std::net::IpAddr;

use anyhow::Context;
use clap::Args;
use lora_train::serve::{ServeConfig, Server};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind; anything but loopback requires a token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0 picks a free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Bearer token required on every route [default: $LORA_TRAIN_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let db = super::record::db_path()
        .context("the server needs the registry: drop --no-registry, or give --db FILE")?;
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("LORA_TRAIN_TOKEN").ok())
        .filter(|t| !t.trim().is_empty());
    let jobs_root = db
        .parent()
        .map(|p| p.join("jobs"))
        .unwrap_or_else(|| "jobs".into());
    let cfg = ServeConfig {
        host: args.host,
        port: args.port,
        token,
        db: db.clone(),
        jobs_root,
        cwd: std::env::current_dir().context("the working directory")?,
        exe: std::env::current_exe().context("this program's path")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let auth = cfg.token.is_some();
        let server = Server::bind(cfg).await?;
        let addr = server.local_addr()?;
        println!("lora-train serve: listening on http://{addr}");
        println!("registry: {}", db.display());
        if auth {
            println!("every route requires `Authorization: Bearer TOKEN` (the token you gave)");
        }
        let _ = std::io::stdout().flush();
        server.serve(shutdown_signal()).await?;
        eprintln!("lora-train serve: stopped");
        Ok(())
    })
}

/// Ctrl-C, or SIGTERM where there is one.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
