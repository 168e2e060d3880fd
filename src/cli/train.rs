//! `lora-train --config job.toml`: train a LoRA adapter here, or submit a `[hosted]` job.
//!
//! Prints the run summary and, unless `--no-report`, runs the job's `[eval]` or `[report]`
//! through the evaluation harness and prints its report. A run that a signal stopped prints the
//! command that continues it and exits with the signal's code.

use std::path::Path;

use lora_train::config::eval::JOB_EVAL_CANDIDATES;
use lora_train::harness::training::{check_job, evaluate_run, preflight};
use lora_train::harness::EvalError;
use lora_train::providers::Env;

use super::Cli;

pub fn run(path: &Path, cli: &Cli) -> anyhow::Result<()> {
    let job = lora_train::config::JobConfig::load_checked(path, &cli.set, check_job)?;
    if job.hosted.is_some() {
        // A `[hosted]` job trains on the provider's cluster instead of here.
        return super::hosted::submit_job_file(path, &cli.set, false);
    }
    job.check_files()?;
    let env = Env::from_process();
    if !cli.no_report {
        // A bad prompt line or a missing judge key fails now, not after training.
        preflight(&job, &env)?;
    }
    // Before the model loads: a refused output folder is reported at once.
    let start = lora_train::train::output_dir::Start::from_flags(cli.resume, cli.overwrite)?;
    lora_train::train::output_dir::check(&job.output.dir, start)?;
    let mut record = super::record::TrainRecord::begin(&job, path, cli.resume);
    let recorded_job = job.clone();
    let trained = train(path, cli, job, &env, &mut record);
    if let (Err(e), Some(record)) = (&trained, record.take()) {
        record.finish(&recorded_job, super::record::TrainEnd::Failed(e));
    }
    trained
}

/// Loads, trains and reports; `record` is finished once training ends.
fn train(
    path: &Path,
    cli: &Cli,
    job: lora_train::config::JobConfig,
    env: &Env,
    record: &mut Option<super::record::TrainRecord>,
) -> anyhow::Result<()> {
    let recorded_job = job.clone();
    let mut trainer = lora_train::train::Trainer::new(job)?;
    let opts = lora_train::train::RunOptions {
        resume: cli.resume,
        progress: true,
        stop_after: cli.stop_after,
        allow_data_change: cli.allow_data_change,
        overwrite: cli.overwrite,
    };
    if opts.resume {
        // Before anything is printed or written.
        trainer.check_resume(&opts)?;
    }
    let malloc = lora_train::alloc::host_training(trainer.device());
    tracing::debug!("host allocator for training: {malloc:?}");
    let (train, validation) = trainer.units();
    let what = match trainer.job().is_dpo() {
        true => "DPO pairs",
        false => "examples",
    };
    eprintln!(
        "training {} on {train} {what} ({validation} validation): {} steps, {} LoRA parameters",
        trainer.model().name_or_path,
        trainer.plan().total_steps,
        trainer.params().num_parameters()
    );
    let stop = lora_train::train::install_stop_handler();
    if let Some(r) = record.as_mut() {
        let metrics = trainer.job().output.dir.join("metrics.jsonl");
        r.training(trainer.plan().total_steps, &metrics);
    }
    let summary = trainer.run(&opts, stop.clone())?;
    print_summary(&summary);
    let mut recorded = None;
    if let Some(r) = record.take() {
        let end = match summary.interrupted {
            true => super::record::TrainEnd::Stopped(lora_train::train::stop_signal(), &summary),
            false => super::record::TrainEnd::Completed(&summary),
        };
        recorded = Some(r.finish(&recorded_job, end));
    }
    if summary.interrupted {
        let (again, resume) = match summary.steps {
            0 => ("start again with", false),
            _ => ("continue with", true),
        };
        eprintln!(
            "stopped at step {}/{}; {again}: {}",
            summary.steps,
            summary.total_steps,
            command_line(path, cli, resume)
        );
        return stopped();
    }
    if !cli.no_report {
        match evaluate_run(&mut trainer, &summary, env, &stop) {
            Ok(Some(done)) => {
                if let Some((id, version)) = recorded {
                    record_run_eval(&done, id, version);
                }
                match &done.behaviour {
                    Some(report) => println!("{}", report.render()),
                    None => {
                        print!(
                            "{}",
                            lora_train::harness::report::render(&done.outcome.report)
                        );
                        println!("\neval: {}", done.dir.display());
                    }
                }
            }
            Ok(None) => {}
            Err(EvalError::Core(lora_train::Error::Interrupted(_))) => {
                eprintln!("stopped during the report; the training run is complete");
                return stopped();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Records the end-of-run evaluation under the run's job, its adapter candidate as the
/// version the run registered (the base stays unmapped).
fn record_run_eval(
    done: &lora_train::harness::training::RunEvaluation,
    job: i64,
    version: Option<String>,
) {
    let Some(reg) = super::record::open() else {
        return;
    };
    let known = version
        .map(|v| (JOB_EVAL_CANDIDATES[1].to_string(), v))
        .into_iter()
        .collect();
    super::record::record_eval(&reg, &done.outcome.report, &done.dir, Some(job), known);
}

/// The end of a run that stopped before its end: exit with the signal's code, or succeed after
/// `--stop-after`, which no signal requested.
fn stopped() -> anyhow::Result<()> {
    match lora_train::train::stop_signal() {
        Some(signal) => Err(super::Stopped(signal).into()),
        None => Ok(()),
    }
}

/// The command that runs this job again, with its `--set` overrides, shell-quoted; with
/// `--resume` when `resume`.
fn command_line(path: &Path, cli: &Cli, resume: bool) -> String {
    let config = path.to_string_lossy();
    let mut words = vec!["lora-train", "--config", &config];
    for set in &cli.set {
        words.extend(["--set", set.as_str()]);
    }
    if cli.no_report {
        words.push("--no-report");
    }
    if resume {
        words.push("--resume");
    }
    super::shell::join(words)
}

fn print_summary(s: &lora_train::train::TrainSummary) {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    println!("== training summary ==");
    println!(
        "steps {}/{}  tokens {}  time {:.1}s  ({:.0} tokens/s)",
        s.steps,
        s.total_steps,
        s.tokens,
        s.elapsed_s,
        s.tokens as f64 / s.elapsed_s.max(1e-9)
    );
    println!(
        "examples: {} train, {} validation; {} truncated, {} dropped (max_seq_len)",
        s.train_examples, s.validation_examples, s.fit.truncated, s.fit.dropped
    );
    println!(
        "train loss: first {}  last {}",
        f(s.first_loss),
        f(s.last_loss)
    );
    println!(
        "validation loss: before {}  after {}",
        f(s.val_loss_before),
        f(s.val_loss_after)
    );
    if let Some(m) = s.peak_gpu_memory_mib {
        println!("peak GPU memory (memory pool): {m} MiB");
    }
    if let Some(a) = &s.adapter_dir {
        println!("adapter: {}", a.display());
    }
    println!(
        "metrics: {}  plot: {}",
        s.output_dir.join("metrics.jsonl").display(),
        s.output_dir.join("loss.svg").display()
    );
}
