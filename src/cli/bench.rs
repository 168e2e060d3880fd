//! `lora-train bench --config job.toml`: measure the job's training steps here (tokens/s,
//! step times, peak memory beside the memory check's estimate, MFU and HFU), on its own data or
//! on synthetic rows; `--sweep` runs each size in a child process of this binary so that a
//! point the OS kills ends only itself. Output: a table, `--json`, and `-o DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use clap::Args;
use lora_train::bench::peft;
use lora_train::bench::sweep::{
    grid, PointOutcome, PointResult, SweepPoint, SweepReport, SweepSpec,
};
use lora_train::bench::{bench_training, render_markdown, write_output, BenchOptions, TrainBench};
use lora_train::config::JobConfig;
use lora_train::harness::training::check_job;
use lora_train::train::{SyntheticData, Trainer};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The job to measure (see configs/README.md): its model, quantization, LoRA,
    /// checkpointing and packing.
    #[arg(long, value_name = "job.toml")]
    pub config: PathBuf,

    /// Override one job key, as in training, e.g. --set train.gradient_checkpointing=true
    /// (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,

    /// Optimizer steps timed (at least 1).
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    pub steps: usize,

    /// Optimizer steps run first and not timed.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,

    /// Train on random token ids instead of the job's data: every row exactly --seq tokens,
    /// all of them targets, so runs are comparable.
    #[arg(long)]
    pub synthetic: bool,

    /// With --synthetic: the rows' length in tokens (default: the job's data.max_seq_len).
    #[arg(long, requires = "synthetic")]
    pub seq: Option<usize>,

    /// Rows per micro-batch (train.micro_batch_size; default: the job's).
    #[arg(long)]
    pub batch: Option<usize>,

    /// Measure each point of a grid in a child process: seq=512,1024 or batch=1,2
    /// (repeatable, one per key; needs --synthetic).
    #[arg(long, value_name = "KEY=V1,V2,...", requires = "synthetic")]
    pub sweep: Vec<SweepSpec>,

    /// Also measure batched generation (prefill and decode tokens/s, time to first token) at
    /// the batch size, after prompts of the sequence length.
    #[arg(long)]
    pub generate: bool,

    /// With --generate: new tokens per row.
    #[arg(long, default_value_t = 32, requires = "generate")]
    pub new_tokens: usize,

    /// Also run PyTorch + transformers + PEFT on the same batches (the Python twins in
    /// scripts/, with the interpreter PYTHON names) and print the ratios.
    #[arg(long, value_name = "peft", conflicts_with = "sweep")]
    pub compare: Option<Compare>,

    /// Print one JSON object (docs/bench.md) instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Also write bench.json and bench.md (and a sweep's plots) to this folder.
    #[arg(short = 'o', long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Replace what -o DIR holds although it is not a bench output folder.
    #[arg(long, requires = "output")]
    pub force: bool,

    /// Run as one point of a sweep: a point the memory check refuses prints
    /// {"status": "skipped", "reason": ...} and succeeds.
    #[arg(long, hide = true)]
    pub point: bool,
}

/// `--steps`: a whole number from 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number of 1 or more")),
    }
}

/// What `--compare` runs beside lora-train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compare {
    /// PyTorch + transformers + PEFT.
    Peft,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.output {
        // Before anything runs: a refused output folder is reported at once.
        lora_train::bench::BENCH_OUTPUT.check(dir, args.force)?;
    }
    // Before the model loads: without a usable Python, say how to get one.
    let python = match args.compare {
        Some(Compare::Peft) => Some((peft::python_from_env()?, peft::scripts_dir()?)),
        None => None,
    };
    if !args.sweep.is_empty() {
        return sweep(args);
    }
    let (job, synthetic) = load_job(args, args.seq, args.batch)?;
    let trainer = match synthetic {
        Some(s) => Trainer::with_synthetic_data(job, s),
        None => Trainer::new(job),
    };
    let mut trainer = match trainer {
        Err(lora_train::Error::DoesNotFit { place, msg }) if args.point => {
            let skipped = PointOutcome::Skipped {
                reason: format!("{place}{msg}"),
            };
            println!("{}", serde_json::to_string(&skipped)?);
            return Ok(());
        }
        other => other?,
    };
    // Before the steps: a job the twins do not run alike is refused at once.
    let twin = match python {
        Some((python, scripts)) => {
            let work = WorkDir::new()?;
            let (script, twin_args) =
                peft::twin_command(&trainer, args.warmup, args.steps, &scripts, &work.0)?;
            Some((python, script, twin_args, work))
        }
        None => None,
    };
    let malloc = lora_train::alloc::host_training(trainer.device());
    tracing::debug!("host allocator for training: {malloc:?}");
    if !args.json {
        eprintln!(
            "bench: {} on {}, {} warm-up + {} timed steps",
            trainer.model().name_or_path,
            lora_train::device::device_name(trainer.device()),
            args.warmup,
            args.steps
        );
    }
    let opts = BenchOptions {
        warmup: args.warmup,
        steps: args.steps,
        progress: !args.point,
    };
    // A DPO job's precomputed reference is computed before the timed steps, as in training.
    let precompute = trainer.precompute_reference_in(None, &AtomicBool::new(false))?;
    let mut report = bench_training(&trainer, &opts)?;
    report.reference_precompute_s = precompute;
    if args.generate {
        report.generate = Some(lora_train::bench::generation::bench_generate(
            trainer.model(),
            trainer.job().train.micro_batch_size,
            report.seq.max(1),
            args.new_tokens,
        )?);
    }
    if twin.is_some() {
        // The twin runs beside this process: what the trainer held would count against it.
        drop(trainer);
        lora_train::alloc::release_free_memory();
    }
    if let Some((python, script, twin_args, _work)) = &twin {
        if !args.json {
            eprintln!("bench: the same batches through {}", script.display());
        }
        report.peft = Some(peft::compare(python, script, twin_args, &report)?);
    }
    let json = serde_json::to_string_pretty(&report)?;
    let markdown = render_markdown(&report);
    if let Some(dir) = &args.output {
        let md = format!("# lora-train bench\n\n{}\n{markdown}", reproduce(args));
        write_output(dir, args.force, &json, &md, &[])?;
    }
    match args.json {
        true => println!("{json}"),
        false => print!("{markdown}"),
    }
    Ok(())
}

/// The job with the user's `--set` and the bench's own overrides: `--batch` as
/// `train.micro_batch_size`; with `--synthetic`, `data.max_seq_len` at the rows' length (the
/// memory check and packing read it). Returns the synthetic rows to train on, if any: one
/// step's worth, which every step reuses.
fn load_job(
    args: &BenchArgs,
    seq: Option<usize>,
    batch: Option<usize>,
) -> anyhow::Result<(JobConfig, Option<SyntheticData>)> {
    let job = JobConfig::load_checked(&args.config, &args.set, check_job)?;
    if job.hosted.is_some() {
        bail!(
            "{}: a [hosted] job trains on the provider's machines; bench measures a local job \
             (remove [hosted], or use a copy of the job without it)",
            args.config.display()
        );
    }
    let mut set = args.set.clone();
    if let Some(b) = batch {
        set.push(format!("train.micro_batch_size={b}"));
    }
    if !args.synthetic {
        let job = match batch {
            Some(_) => JobConfig::load_checked(&args.config, &set, check_job)?,
            None => job,
        };
        return Ok((job, None));
    }
    let seq = seq.unwrap_or(job.data.max_seq_len);
    set.push(format!("data.max_seq_len={seq}"));
    let job = JobConfig::load_checked(&args.config, &set, check_job)?;
    let synthetic = SyntheticData {
        seq,
        rows: job.train.micro_batch_size * job.train.grad_accum,
        seed: job.train.seed,
    };
    Ok((job, Some(synthetic)))
}

/// Runs every point of the sweep in a child process of this binary and reports them.
fn sweep(args: &BenchArgs) -> anyhow::Result<()> {
    let (job, _) = load_job(args, args.seq, args.batch)?;
    let points = grid(
        &args.sweep,
        args.seq.unwrap_or(job.data.max_seq_len),
        args.batch.unwrap_or(job.train.micro_batch_size),
    )?;
    let exe =
        std::env::current_exe().context("cannot find this program to run the sweep's points")?;
    let bar = indicatif::ProgressBar::new(points.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} points  {msg}  [{elapsed_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut results = Vec::new();
    for point in points {
        bar.set_message(format!("seq {} batch {}", point.seq, point.batch));
        let outcome = run_point(&exe, args, point)?;
        bar.println(format!(
            "seq {} batch {}: {}",
            point.seq,
            point.batch,
            match &outcome {
                PointOutcome::Measured { result } =>
                    format!("{:.1} tokens/s", result.real_tokens_per_second),
                other => other.summary(),
            }
        ));
        results.push(PointResult { point, outcome });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = SweepReport::new(&args.sweep, results);
    let json = serde_json::to_string_pretty(&report)?;
    let markdown = report.markdown();
    if let Some(dir) = &args.output {
        let plots = report.plots();
        let mut md = format!(
            "# lora-train bench sweep\n\n{}\n{markdown}",
            reproduce(args)
        );
        for (name, _) in &plots {
            md += &format!("\n![{name}]({name})\n");
        }
        write_output(dir, args.force, &json, &md, &plots)?;
    }
    match args.json {
        true => println!("{json}"),
        false => print!("{markdown}"),
    }
    Ok(())
}

/// One point in a child process: its JSON on success, a skip, the OS's kill, or its error.
fn run_point(exe: &Path, args: &BenchArgs, point: SweepPoint) -> anyhow::Result<PointOutcome> {
    let mut cmd = Command::new(exe);
    cmd.arg("bench").arg("--config").arg(&args.config);
    for s in &args.set {
        cmd.args(["--set", s]);
    }
    cmd.args(["--synthetic", "--json", "--point"])
        .args(["--seq", &point.seq.to_string()])
        .args(["--batch", &point.batch.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string()]);
    if args.generate {
        cmd.args(["--generate", "--new-tokens", &args.new_tokens.to_string()]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {} for a sweep point", exe.display()))?;
    if lora_train::bench::killed_by_signal(&out.status) == Some(9) {
        return Ok(PointOutcome::OutOfMemory);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let last = stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let reason = match last.strip_prefix("error: ") {
            Some(e) => e.to_string(),
            None => format!("exit status {:?}: {last}", out.status.code()),
        };
        return Ok(PointOutcome::Failed { reason });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Ok(skipped @ PointOutcome::Skipped { .. }) = serde_json::from_str(&stdout) {
        return Ok(skipped);
    }
    match serde_json::from_str::<TrainBench>(&stdout) {
        Ok(result) => Ok(PointOutcome::Measured {
            result: Box::new(result),
        }),
        Err(e) => Ok(PointOutcome::Failed {
            reason: format!("its output is not a bench result ({e})"),
        }),
    }
}

/// A folder of this process under the system's temp folder, removed when dropped: where the
/// PEFT twin reads its token ids.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("lora-train-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The command line that repeats this measurement, for `bench.md`.
fn reproduce(args: &BenchArgs) -> String {
    let mut words: Vec<String> = vec!["lora-train".into(), "bench".into(), "--config".into()];
    words.push(args.config.to_string_lossy().into_owned());
    for s in &args.set {
        words.extend(["--set".into(), s.clone()]);
    }
    words.extend([
        "--steps".into(),
        args.steps.to_string(),
        "--warmup".into(),
        args.warmup.to_string(),
    ]);
    if args.synthetic {
        words.push("--synthetic".into());
    }
    if let Some(s) = args.seq {
        words.extend(["--seq".into(), s.to_string()]);
    }
    if let Some(b) = args.batch {
        words.extend(["--batch".into(), b.to_string()]);
    }
    for s in &args.sweep {
        let values: Vec<String> = s.values.iter().map(|v| v.to_string()).collect();
        words.extend([
            "--sweep".into(),
            format!("{}={}", s.key.name(), values.join(",")),
        ]);
    }
    if args.generate {
        words.extend([
            "--generate".into(),
            "--new-tokens".into(),
            args.new_tokens.to_string(),
        ]);
    }
    format!(
        "Reproduce:\n\n```sh\n{}\n```\n",
        super::shell::join(words.iter().map(String::as_str))
    )
}
