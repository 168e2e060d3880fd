//! `lora-train doctor`: what this build is and what it finds on this machine (CPU, memory,
//! the CUDA driver, GPUs and libraries, threads, the Hugging Face cache and endpoint), as text or
//! as one JSON object (`--json`, schema in docs/doctor.md) for bug reports, in the way
//! `torch.utils.collect_env` and `vllm collect-env` are used. It downloads nothing.

use std::time::Duration;

use clap::Args;
use lora_train::device::cuda_libs;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON object (docs/doctor.md) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    build: Build,
    cpu: Cpu,
    memory: Memory,
    cuda: Cuda,
    metal: Metal,
    threads: Threads,
    hf: Hf,
}

#[derive(Debug, Serialize)]
struct Build {
    version: &'static str,
    features: Vec<&'static str>,
    /// The commit the release scripts built, when they set it.
    commit: Option<&'static str>,
    target: String,
}

#[derive(Debug, Serialize)]
struct Cpu {
    model: Option<String>,
    arch: &'static str,
    logical_cores: usize,
    avx2: bool,
    avx512f: bool,
}

#[derive(Debug, Serialize)]
struct Memory {
    total_mib: Option<u64>,
    available_mib: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Cuda {
    /// Whether this binary was built with CUDA.
    built: bool,
    driver: Option<String>,
    gpus: Vec<cuda_libs::GpuReport>,
    libraries: Vec<cuda_libs::LoadedLibrary>,
    /// Why the driver gave no GPUs, when it did not.
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Metal {
    built: bool,
}

#[derive(Debug, Serialize)]
struct Threads {
    /// The CPU threads candle and rayon use (`RAYON_NUM_THREADS`).
    count: Option<usize>,
    available: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Hf {
    cache: String,
    endpoint: String,
    /// Whether the endpoint answered; `None` when not asked (`HF_HUB_OFFLINE=1`).
    reachable: Option<bool>,
    offline: bool,
    /// Whether `HF_TOKEN` is set; the token itself is never shown.
    token_set: bool,
}

pub fn run(a: &DoctorArgs) -> anyhow::Result<()> {
    let report = gather();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn gather() -> Report {
    let mut features = Vec::new();
    if cfg!(feature = "cuda") {
        features.push("cuda");
    }
    if cfg!(feature = "metal") {
        features.push("metal");
    }
    let libraries = cuda_libs::load().to_vec();
    let driver = cuda_libs::probe_driver();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb >> 10)
    };
    Report {
        build: Build {
            version: env!("CARGO_PKG_VERSION"),
            features,
            commit: option_env!("LORA_TRAIN_COMMIT"),
            target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        },
        cpu: Cpu {
            model: std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            }),
            arch: std::env::consts::ARCH,
            logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            avx2: x86_feature("avx2"),
            avx512f: x86_feature("avx512f"),
        },
        memory: Memory {
            total_mib: mem("MemTotal:"),
            available_mib: mem("MemAvailable:"),
        },
        cuda: Cuda {
            built: cfg!(feature = "cuda"),
            driver: driver.version,
            gpus: driver.gpus,
            libraries,
            error: driver.error,
        },
        metal: Metal {
            built: cfg!(feature = "metal"),
        },
        threads: Threads {
            count: std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok()),
            available: std::thread::available_parallelism().ok().map(|n| n.get()),
        },
        hf: hf(),
    }
}

fn x86_feature(name: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match name {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        false
    }
}

fn hf() -> Hf {
    // The Hub client's own reading of the environment, so doctor shows what downloads use.
    let settings = lora_train::hub::HubSettings::from_env();
    let reachable = (!settings.offline).then(|| reachable(&settings.endpoint));
    Hf {
        cache: settings.cache.root().display().to_string(),
        endpoint: settings.endpoint,
        reachable,
        offline: settings.offline,
        token_set: settings.token.is_some(),
    }
}

/// Whether the endpoint answers at all (any HTTP status) within a few seconds: a HEAD of its
/// root, which downloads nothing.
fn reachable(endpoint: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    agent.head(endpoint).call().is_ok()
}

fn print_text(r: &Report) {
    let or_unknown = |v: Option<u64>| v.map_or("unknown".into(), |v| format!("{v} MiB"));
    println!(
        "build:   lora-train {} ({}), features: {}, commit {}",
        r.build.version,
        r.build.target,
        if r.build.features.is_empty() {
            "cpu only".to_string()
        } else {
            r.build.features.join(", ")
        },
        r.build.commit.unwrap_or("unknown")
    );
    println!(
        "cpu:     {} ({} logical cores, avx2 {}, avx512f {})",
        r.cpu.model.as_deref().unwrap_or(r.cpu.arch),
        r.cpu.logical_cores,
        yes_no(r.cpu.avx2),
        yes_no(r.cpu.avx512f)
    );
    println!(
        "memory:  {} total, {} available",
        or_unknown(r.memory.total_mib),
        or_unknown(r.memory.available_mib)
    );
    match (&r.cuda.driver, &r.cuda.error) {
        (Some(v), None) => println!("cuda:    driver {v}, {} GPU(s)", r.cuda.gpus.len()),
        (Some(v), Some(e)) => println!("cuda:    driver {v}, {e}"),
        (None, e) => println!("cuda:    {}", e.as_deref().unwrap_or("no driver")),
    }
    if !r.cuda.built {
        println!("         this build has no CUDA: it runs on the CPU (scripts/build-cuda.sh builds one that has)");
    }
    for g in &r.cuda.gpus {
        println!(
            "  gpu {}: {}, compute capability {}, {} MiB, {} free",
            g.index,
            g.name,
            g.compute_capability,
            g.total_mib,
            g.free_mib.map_or("unknown".into(), |f| format!("{f} MiB"))
        );
    }
    for l in &r.cuda.libraries {
        match (&l.path, &l.error) {
            (Some(p), _) => println!("  {}: {p}", l.name),
            (None, e) => println!(
                "  {}: not loaded ({})",
                l.name,
                e.as_deref().unwrap_or("not found")
            ),
        }
    }
    println!(
        "metal:   {}",
        if r.metal.built { "built" } else { "not built" }
    );
    println!(
        "threads: {} (of {} available)",
        r.threads.count.map_or("default".into(), |n| n.to_string()),
        r.threads
            .available
            .map_or("unknown".into(), |n| n.to_string())
    );
    println!(
        "hf:      cache {}, endpoint {} ({}), HF_TOKEN {}",
        r.hf.cache,
        r.hf.endpoint,
        match r.hf.reachable {
            None => "offline: HF_HUB_OFFLINE",
            Some(true) => "reachable",
            Some(false) => "not reachable",
        },
        if r.hf.token_set { "set" } else { "not set" }
    );
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
