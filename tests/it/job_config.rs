//! The job file layer: parsing, `--set` overrides, unknown-key suggestions, type errors with
//! lines, every `validate()` rule, relative paths, `[hosted]` passthrough, and the shipped
//! quickstart job and dataset.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use lora_train::config::job::{JobConfig, TrainLength, ValidationSpec, LORA_TARGET_MODULES};
use lora_train::data::dataset::read_jsonl;
use lora_train::data::{LossOn, Role};
use lora_train::lora::TargetModules;

const BASE: &str = r#"[model]
source = "m.gguf"
device = "cpu"

[data]
train = "train.jsonl"
validation = "valid.jsonl"

[train]
max_steps = 10
lr = 1e-3

[output]
dir = "out"
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loads `text` as `<tmp>/job.toml`; the folder is returned so paths stay valid.
fn load(text: &str, overrides: &[&str]) -> (tempfile::TempDir, lora_train::Result<JobConfig>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.toml");
    std::fs::write(&path, text).unwrap();
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let result = JobConfig::load(&path, &overrides);
    (dir, result)
}

fn load_ok(text: &str, overrides: &[&str]) -> (tempfile::TempDir, JobConfig) {
    let (dir, result) = load(text, overrides);
    match result {
        Ok(job) => (dir, job),
        Err(e) => panic!("expected the job to load, got: {e}"),
    }
}

fn load_err(text: &str, overrides: &[&str]) -> String {
    match load(text, overrides).1 {
        Ok(_) => panic!("expected an error for overrides {overrides:?} on:\n{text}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "error is not one line: {msg}");
            msg
        }
    }
}

fn assert_contains(msg: &str, needle: &str) {
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
}

/// The 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}

#[test]
fn quickstart_config_parses_and_validates() {
    let path = repo().join("configs/quickstart.toml");
    let job = JobConfig::load(&path, &[]).unwrap();
    assert!(job
        .model
        .source
        .ends_with("models/smollm2-135m-instruct.Q4_1.gguf"));
    assert_eq!(job.model.device, "cpu");
    assert_eq!(job.model.dtype, "f32");
    assert_eq!(job.lora.r, 8);
    assert_eq!(job.lora.alpha, 16.0);
    assert_eq!(
        job.target_module_names(),
        ["q_proj", "k_proj", "v_proj", "o_proj"]
    );
    assert_eq!(job.data.loss_on, LossOn::LastAssistant);
    assert_eq!(job.data.max_seq_len, 256);
    assert_eq!(job.train.micro_batch_size, 4);
    assert_eq!(job.train.grad_accum, 1);
    assert!(matches!(job.train.length(), TrainLength::Steps(s) if (50..=120).contains(&s)));
    assert_eq!(
        (
            job.train.eval_every,
            job.train.save_every,
            job.train.keep_last
        ),
        (20, 20, 2)
    );
    let configs = repo().join("configs");
    assert_eq!(
        job.data.train,
        configs.join("../data/quickstart/train.jsonl")
    );
    assert_eq!(
        job.data.validation,
        Some(ValidationSpec::File(
            configs.join("../data/quickstart/valid.jsonl")
        ))
    );
    assert_eq!(job.output.dir, configs.join("../runs/quickstart"));
    job.validate().unwrap();
    job.check_files().unwrap();
}

#[test]
fn every_shipped_config_loads() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let loaded = if name.starts_with("eval-") {
                lora_train::harness::config::EvalConfig::load(&path, &[]).map(|_| ())
            } else if name.starts_with("synth-") {
                let flags = lora_train::synth::config::SynthOverrides::default();
                lora_train::synth::config::SynthConfig::load(&path, &[], &flags).map(|_| ())
            } else if name == "process.toml" {
                lora_train::synth::config::ProcessConfig::load(&path, &[]).map(|_| ())
            } else {
                JobConfig::load(&path, &[]).map(|_| ())
            };
            if let Err(e) = loaded {
                panic!("{e}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 1);
}

#[test]
fn unknown_key_suggests_the_nearest_key_with_file_and_line() {
    let text = BASE.replace("lr = 1e-3", "lerning_rate = 1e-3");
    let msg = load_err(&text, &[]);
    assert_contains(
        &msg,
        "unknown key `train.lerning_rate` (did you mean `train.lr`?)",
    );
    assert_contains(
        &msg,
        &format!("job.toml:{}:", line_of(&text, "lerning_rate")),
    );

    let msg = load_err(&BASE.replace("max_steps", "max_step"), &[]);
    assert_contains(&msg, "did you mean `train.max_steps`?");
}

#[test]
fn unknown_key_from_another_section_points_there() {
    let msg = load_err(
        &format!("{BASE}\n[lora]\nrank = 4\nmax_seq_len = 64\n"),
        &[],
    );
    assert_contains(&msg, "unknown key `lora.rank` (did you mean `lora.r`?)");
    let msg = load_err(
        &BASE.replace("lr = 1e-3", "target_modules = [\"q_proj\"]"),
        &[],
    );
    assert_contains(&msg, "did you mean `lora.target_modules`?");
}

#[test]
fn unknown_key_without_a_near_name_lists_the_valid_keys() {
    let msg = load_err(&format!("{BASE}\n[lora]\nzzzzzzzz = 1\n"), &[]);
    assert_contains(
        &msg,
        "unknown key `lora.zzzzzzzz` (valid keys in [lora]: r, alpha,",
    );
}

#[test]
fn unknown_section_suggests_the_nearest_section() {
    let text = BASE.replace("[train]", "[trian]");
    let msg = load_err(&text, &[]);
    assert_contains(&msg, "unknown section `trian` (did you mean `train`?)");
    assert_contains(&msg, &format!("job.toml:{}:", line_of(&text, "[trian]")));

    let msg = load_err(&format!("lr = 0.1\n{BASE}"), &[]);
    assert_contains(&msg, "unknown key `lr` (did you mean `train.lr`?)");
}

#[test]
fn type_errors_name_the_key_and_the_line() {
    let text = BASE.replace("lr = 1e-3", "lr = \"fast\"");
    let msg = load_err(&text, &[]);
    assert_contains(&msg, &format!("job.toml:{}:", line_of(&text, "lr =")));
    assert_contains(&msg, "`train.lr`: expected a number, found string \"fast\"");

    let text = BASE.replace("max_steps = 10", "max_steps = -3");
    let msg = load_err(&text, &[]);
    assert_contains(&msg, &format!("job.toml:{}:", line_of(&text, "max_steps")));
    assert_contains(&msg, "`train.max_steps`: expected a non-negative integer");

    let msg = load_err(
        &format!("{BASE}\n[lora]\ntarget_modules = [\"q_proj\", 3]\n"),
        &[],
    );
    assert_contains(&msg, "`lora.target_modules`: expected a list of strings");

    let msg = load_err(&BASE.replace("device = \"cpu\"", "device = 0"), &[]);
    assert_contains(&msg, "`model.device`: expected a string, found integer 0");

    let msg = load_err(&format!("{BASE}\n[lora]\nuse_rslora = \"yes\"\n"), &[]);
    assert_contains(&msg, "`lora.use_rslora`: expected true or false");

    let msg = load_err(&BASE.replace("lr = 1e-3", "scheduler = \"cosin\""), &[]);
    assert_contains(&msg, "`train.scheduler`: unknown value \"cosin\"");
    assert_contains(&msg, "did you mean `cosine`?");

    let msg = load_err(
        &format!(
            "output = 3\n{}",
            BASE.replace("[output]\ndir = \"out\"\n", "")
        ),
        &[],
    );
    assert_contains(&msg, "`output` must be a table");
}

#[test]
fn syntax_errors_name_file_and_line() {
    let text = BASE.replace("lr = 1e-3", "lr = = 1");
    let msg = load_err(&text, &[]);
    assert_contains(&msg, &format!("job.toml:{}:", line_of(&text, "lr =")));
}

#[test]
fn missing_sections_and_required_keys_are_named() {
    let msg = load_err(&BASE.replace("[output]\ndir = \"out\"\n", ""), &[]);
    assert_contains(&msg, "missing section `[output]`");
    let msg = load_err(&BASE.replace("train = \"train.jsonl\"\n", ""), &[]);
    assert_contains(&msg, "missing key `data.train`");
    let msg = load_err(&BASE.replace("source = \"m.gguf\"\n", ""), &[]);
    assert_contains(&msg, "missing key `model.source`");
}

#[test]
fn missing_file_names_its_path() {
    let err = JobConfig::load(Path::new("/nonexistent/job.toml"), &[]).unwrap_err();
    assert_contains(&err.to_string(), "/nonexistent/job.toml");
}

#[test]
fn set_overrides_numbers_strings_bools_and_arrays() {
    let (_dir, job) = load_ok(
        BASE,
        &[
            "train.lr=5e-4",
            "lora.r=4",
            "lora.alpha=8",
            "train.scheduler=cosine",
            "model.dtype=\"bf16\"",
            "data.shuffle=false",
            "lora.target_modules=[\"q_proj\", \"v_proj\"]",
            " train.seed = 7 ",
            "data.validation=0.2",
        ],
    );
    assert_eq!(job.train.lr, 5e-4);
    assert_eq!(job.lora.r, 4);
    assert_eq!(job.lora.alpha, 8.0);
    assert_eq!(
        job.train.scheduler,
        lora_train::config::job::SchedulerKind::Cosine
    );
    assert_eq!(job.model.dtype, "bf16");
    assert!(!job.data.shuffle);
    assert_eq!(
        job.lora.target_modules,
        TargetModules::List(vec!["q_proj".into(), "v_proj".into()])
    );
    assert_eq!(job.train.seed, 7);
    assert_eq!(job.data.validation, Some(ValidationSpec::Fraction(0.2)));
}

#[test]
fn set_paths_are_relative_to_the_current_directory() {
    let (dir, job) = load_ok(BASE, &["data.train=other/train.jsonl", "output.dir=runs/x"]);
    assert_eq!(job.data.train, PathBuf::from("other/train.jsonl"));
    assert_eq!(job.output.dir, PathBuf::from("runs/x"));
    assert_eq!(
        job.data.validation,
        Some(ValidationSpec::File(dir.path().join("valid.jsonl")))
    );
}

#[test]
fn set_errors_name_the_override() {
    let msg = load_err(BASE, &["train.lerning_rate=3"]);
    assert_contains(&msg, "--set train.lerning_rate=3");
    assert_contains(
        &msg,
        "unknown key `train.lerning_rate` (did you mean `train.lr`?)",
    );

    let msg = load_err(BASE, &["train.lr"]);
    assert_contains(&msg, "--set train.lr: expected section.key=value");

    let msg = load_err(BASE, &["train.lr.peak=3"]);
    assert_contains(&msg, "--set train.lr.peak=3: expected section.key=value");

    let msg = load_err(BASE, &["lr=3"]);
    assert_contains(&msg, "did you mean `train.lr`?");

    let msg = load_err(BASE, &["trainer.lr=3"]);
    assert_contains(&msg, "unknown section `trainer` (did you mean `train`?)");

    let msg = load_err(BASE, &["train.lr=fast"]);
    assert_contains(&msg, "--set train.lr=fast");
    assert_contains(&msg, "`train.lr`: expected a number, found string \"fast\"");

    let msg = load_err(BASE, &["lora.r=0"]);
    assert_contains(&msg, "--set lora.r=0: `lora.r` must be at least 1");
}

#[test]
fn set_can_add_a_section_the_file_leaves_out() {
    let (_dir, job) = load_ok(
        BASE,
        &["lora.r=2", "report.prompts=p.jsonl", "report.contains=x"],
    );
    assert_eq!(job.lora.r, 2);
    assert_eq!(job.lora.alpha, 32.0);
    assert_eq!(job.report.unwrap().prompts, PathBuf::from("p.jsonl"));
}

#[test]
fn relative_paths_resolve_against_the_job_file_folder() {
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(jobs.join("models")).unwrap();
    std::fs::write(jobs.join("models/m.gguf"), b"").unwrap();
    let text = r#"
[model]
source = "models/m.gguf"
[lora]
init_adapter = "../adapters/a"
[data]
train = "../data/train.jsonl"
validation = "/abs/valid.jsonl"
[output]
dir = "../runs/r"
[report]
prompts = "p.jsonl"
ends_with = "!"
"#;
    let path = jobs.join("job.toml");
    std::fs::write(&path, text).unwrap();
    let job = JobConfig::load(&path, &[]).unwrap();
    assert_eq!(PathBuf::from(&job.model.source), jobs.join("models/m.gguf"));
    assert_eq!(job.lora.init_adapter, Some(jobs.join("../adapters/a")));
    assert_eq!(job.data.train, jobs.join("../data/train.jsonl"));
    assert_eq!(
        job.data.validation,
        Some(ValidationSpec::File("/abs/valid.jsonl".into()))
    );
    assert_eq!(job.output.dir, jobs.join("../runs/r"));
    assert_eq!(job.report.as_ref().unwrap().prompts, jobs.join("p.jsonl"));

    // A hub id is a relative path too, but not one that exists: it stays as written.
    std::fs::write(
        &path,
        text.replace("models/m.gguf", "HuggingFaceTB/SmolLM2-135M"),
    )
    .unwrap();
    let job = JobConfig::load(&path, &[]).unwrap();
    assert_eq!(job.model.source, "HuggingFaceTB/SmolLM2-135M");

    let err = job.check_files().unwrap_err().to_string();
    assert_contains(&err, "`data.train`");
}

#[test]
fn hosted_table_is_kept_for_the_providers() {
    let text = format!(
        "{BASE}\n[hosted]\nprovider = \"together\"\nsuffix = \"bot\"\n[hosted.extra]\nn = 2\n"
    );
    let (_dir, job) = load_ok(&text, &["hosted.model=\"org/base\"", "hosted.extra.m=3"]);
    let hosted = job.hosted.unwrap();
    assert_eq!(hosted["provider"].as_str(), Some("together"));
    assert_eq!(hosted["model"].as_str(), Some("org/base"));
    assert_eq!(hosted["extra"]["n"].as_integer(), Some(2));
    assert_eq!(hosted["extra"]["m"].as_integer(), Some(3));

    let (_dir, job) = load_ok(BASE, &[]);
    assert!(job.hosted.is_none());
    let msg = load_err(&format!("hosted = 1\n{BASE}"), &[]);
    assert_contains(&msg, "`hosted` must be a table");
}

#[test]
fn defaults_and_helpers() {
    let (_dir, job) = load_ok(&BASE.replace("max_steps = 10\n", ""), &[]);
    assert_eq!(job.train.length(), TrainLength::Epochs(1.0));
    assert_eq!(job.train.warmup_steps_for(100), 0);
    assert_eq!(job.data.loss_on, LossOn::LastAssistant);
    assert!(job.data.shuffle);
    assert_eq!(job.lora.scaling(), 2.0);

    let (_dir, job) = load_ok(
        BASE,
        &[
            "train.warmup_ratio=0.05",
            "lora.use_rslora=true",
            "lora.r=4",
        ],
    );
    assert_eq!(job.train.warmup_steps_for(30), 2);
    assert_eq!(job.lora.scaling(), 16.0);
    let (_dir, job) = load_ok(BASE, &["train.warmup_steps=50"]);
    assert_eq!(job.train.warmup_steps_for(30), 30);
}

#[test]
fn all_linear_expands_to_the_seven_projections() {
    let (_dir, job) = load_ok(BASE, &["lora.target_modules=all-linear"]);
    assert_eq!(job.target_module_names(), LORA_TARGET_MODULES);
    let (_dir, job) = load_ok(
        BASE,
        &["lora.target_modules=[\"v_proj\", \"q_proj\", \"v_proj\"]"],
    );
    assert_eq!(job.target_module_names(), ["v_proj", "q_proj"]);
}

#[test]
fn every_validation_rule_names_its_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["lora.r=0"], "`lora.r` must be at least 1"),
        (&["lora.alpha=0"], "`lora.alpha` must be > 0"),
        (&["lora.alpha=nan"], "`lora.alpha` must be > 0"),
        (&["lora.dropout=1.0"], "`lora.dropout` must be in [0, 1)"),
        (&["lora.dropout=-0.1"], "`lora.dropout` must be in [0, 1)"),
        (
            &["lora.target_modules=[\"q_proj\", \"lm_head\"]"],
            "`lm_head` is not supported",
        ),
        (
            &["lora.target_modules=embed_tokens"],
            "`embed_tokens` is not supported",
        ),
        (
            &["lora.target_modules=[\"qproj\"]"],
            "unknown module `qproj` (did you mean `q_proj`?)",
        ),
        (
            &["lora.target_modules=[]"],
            "`lora.target_modules` is an empty list",
        ),
        (&["lora.init_adapter=\"\""], "`lora.init_adapter` is empty"),
        (&["model.source=\"\""], "`model.source` is empty"),
        (
            &["model.dtype=fp32"],
            "`model.dtype` must be f32, bf16 or f16",
        ),
        (
            &["model.device=gpu"],
            "`model.device` must be auto, cpu, cuda:N or metal",
        ),
        (
            &["model.device=cuda:x"],
            "`model.device` must be auto, cpu, cuda:N or metal",
        ),
        (&["data.validation=0"], "`data.validation` as a fraction"),
        (&["data.validation=1.0"], "`data.validation` as a fraction"),
        (&["data.validation=\"\""], "`data.validation` is empty"),
        (&["data.train=\"\""], "`data.train` is empty"),
        (
            &["data.max_seq_len=8"],
            "`data.max_seq_len` must be at least 16",
        ),
        (
            &["train.epochs=2"],
            "`train.epochs` and `train.max_steps` are both set",
        ),
        (
            &["train.max_steps=0"],
            "`train.max_steps` must be at least 1",
        ),
        (
            &["train.micro_batch_size=0"],
            "`train.micro_batch_size` must be at least 1",
        ),
        (
            &["train.grad_accum=0"],
            "`train.grad_accum` must be at least 1",
        ),
        (&["train.lr=0"], "`train.lr` must be > 0"),
        (&["train.lr=-1e-3"], "`train.lr` must be > 0"),
        (
            &["train.warmup_steps=5", "train.warmup_ratio=0.1"],
            "`train.warmup_steps` and `train.warmup_ratio` are both set",
        ),
        (
            &["train.warmup_ratio=1.0"],
            "`train.warmup_ratio` must be in [0, 1)",
        ),
        (
            &["train.min_lr_ratio=1.5"],
            "`train.min_lr_ratio` must be in [0, 1]",
        ),
        (
            &["train.weight_decay=-0.01"],
            "`train.weight_decay` must be >= 0",
        ),
        (
            &["train.max_grad_norm=-1"],
            "`train.max_grad_norm` must be >= 0",
        ),
        (&["output.dir=\"\""], "`output.dir` is empty"),
        (
            &["report.prompts=p.jsonl"],
            "`report` needs a behaviour to look for",
        ),
        (
            &[
                "report.prompts=p.jsonl",
                "report.contains=x",
                "report.max_new_tokens=0",
            ],
            "`report.max_new_tokens` must be at least 1",
        ),
    ];
    for (overrides, expected) in cases {
        let msg = load_err(BASE, overrides);
        assert_contains(&msg, expected);
    }

    let without_validation = BASE.replace("validation = \"valid.jsonl\"\n", "");
    let msg = load_err(&without_validation, &["train.eval_every=5"]);
    assert_contains(&msg, "`train.eval_every` = 5 needs `data.validation`");
    let msg = load_err(&format!("{BASE}\n[train.x]\n"), &[]);
    assert_contains(&msg, "unknown key `train.x`");

    let (_dir, job) = load_ok(&without_validation, &[]);
    job.validate().unwrap();
    let (_dir, job) = load_ok(
        BASE,
        &[
            "model.device=cuda:1",
            "train.min_lr_ratio=1",
            "train.warmup_ratio=0",
        ],
    );
    job.validate().unwrap();
}

#[test]
fn validation_errors_in_the_file_point_at_the_line() {
    let text = format!("{BASE}\n[lora]\nalpha = 16\nr = 0\n");
    let msg = load_err(&text, &[]);
    let expected = format!(
        "job.toml:{}: `lora.r` must be at least 1 (got 0)",
        line_of(&text, "r = 0")
    );
    assert!(msg.ends_with(&expected), "{msg}");
}

#[test]
fn validate_checks_a_config_built_in_code() {
    let (_dir, mut job) = load_ok(BASE, &[]);
    job.train.grad_accum = 0;
    let msg = job.validate().unwrap_err().to_string();
    assert_eq!(msg, "`train.grad_accum` must be at least 1 (got 0)");
    job.train.grad_accum = 1;
    job.lora.target_modules = TargetModules::One("all-linear".into());
    job.validate().unwrap();
}

#[test]
fn resolved_job_round_trips_through_toml() {
    let (_dir, job) = load_ok(&format!("{BASE}\n[hosted]\nprovider = \"openai\"\n"), &[]);
    let text = job.to_toml_string().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolved.toml");
    std::fs::write(&path, &text).unwrap();
    let again = JobConfig::load(&path, &[]).unwrap();
    assert_eq!(again.to_toml_string().unwrap(), text);
}

/// data/quickstart/README.md: every assistant reply starts with "Ahoy! " and ends with the line
/// "— Captain Byte 🦀"; held-out questions never appear in the training set.
#[test]
fn quickstart_dataset_teaches_one_checkable_behaviour() {
    let train = read_jsonl(repo().join("data/quickstart/train.jsonl")).unwrap();
    let valid = read_jsonl(repo().join("data/quickstart/valid.jsonl")).unwrap();
    assert!(train.len() >= 200, "{} training conversations", train.len());
    assert!(valid.len() >= 40, "{} held-out conversations", valid.len());
    for c in train.iter().chain(&valid) {
        for m in c.messages.iter().filter(|m| m.role == Role::Assistant) {
            assert!(m.content.starts_with("Ahoy! "), "{:?}", m.content);
            assert!(
                m.content.ends_with("\n— Captain Byte 🦀"),
                "{:?}",
                m.content
            );
        }
        assert_eq!(c.messages.last().unwrap().role, Role::Assistant);
    }
    let with_system = train
        .iter()
        .filter(|c| c.messages[0].role == Role::System)
        .count();
    assert!(with_system > 0 && with_system < train.len());
    assert!(train.iter().any(|c| c
        .messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count()
        > 1));

    // Follow-ups such as "Thanks!" recur in many conversations; questions do not.
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for c in train.iter().chain(&valid) {
        for m in c.messages.iter().filter(|m| m.role == Role::User) {
            *uses.entry(m.content.as_str()).or_default() += 1;
        }
    }
    let train_prompts: HashSet<&str> = train
        .iter()
        .flat_map(|c| &c.messages)
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .collect();
    for c in &valid {
        for m in c.messages.iter().filter(|m| m.role == Role::User) {
            if uses[m.content.as_str()] < 3 {
                assert!(
                    !train_prompts.contains(m.content.as_str()),
                    "{:?} is also in train",
                    m.content
                );
            }
        }
    }
}

#[test]
fn dpo_keys_are_checked_and_name_their_line() {
    let (_d, job) = load_ok(&format!("{BASE}[dpo]\nbeta = 0.2\n"), &["train.method=dpo"]);
    assert!(job.is_dpo());
    assert_eq!(job.dpo().beta, 0.2);
    assert!(!job.dpo_reference_is_init_adapter());
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "[dpo]\nbeta = 0.2\n",
            &[],
            "`[dpo]` is given but `train.method` is \"sft\"",
        ),
        (
            "",
            &["train.method=dpo", "data.packing=true"],
            "`data.packing` is for SFT for now",
        ),
        (
            "",
            &["train.method=dpo", "data.loss_on=all"],
            "`data.loss_on` = \"all\" chooses SFT targets",
        ),
        (
            "[dpo]\nbeta = 0\n",
            &["train.method=dpo"],
            "`dpo.beta` must be > 0",
        ),
        (
            "[dpo]\nlabel_smoothing = 0.1\n",
            &["train.method=dpo"],
            "read by the \"robust\" loss only",
        ),
        (
            "[dpo]\nloss = \"robust\"\nlabel_smoothing = 0.5\n",
            &["train.method=dpo"],
            "`dpo.label_smoothing` must be in [0, 0.5)",
        ),
        (
            "[dpo]\nloss = \"ipo\"\nnormalize_by_length = true\n",
            &["train.method=dpo"],
            "needs dpo.loss = \"sigmoid\"",
        ),
        (
            "[dpo]\nreference = \"init_adapter\"\n",
            &["train.method=dpo"],
            "needs `lora.init_adapter`",
        ),
        (
            "[dpo]\nloss = \"kto\"\n",
            &["train.method=dpo"],
            "unknown value \"kto\" (expected sigmoid, ipo, hinge, robust",
        ),
        ("", &["train.method=orpo"], "expected sft, dpo"),
        (
            "[dpo]\nbta = 0.1\n",
            &["train.method=dpo"],
            "did you mean `dpo.beta`?",
        ),
    ];
    for (extra, overrides, want) in cases {
        let text = format!("{BASE}{extra}");
        let msg = load_err(&text, overrides);
        assert_contains(&msg, want);
        assert!(msg.contains("job.toml"), "{msg}");
    }
    // A `[dpo]` key's error names its line.
    let text = format!("{BASE}[dpo]\nbeta = -1\n");
    let msg = load_err(&text, &["train.method=dpo"]);
    assert_contains(&msg, &format!("job.toml:{}", line_of(&text, "beta")));
    // The init adapter is the reference by default, and `base` may be asked for instead.
    let with_init = format!("{BASE}[lora]\ninit_adapter = \"a\"\n");
    let (_d, job) = load_ok(&with_init, &["train.method=dpo"]);
    assert!(job.dpo_reference_is_init_adapter());
    let (_d, job) = load_ok(&with_init, &["train.method=dpo", "dpo.reference=base"]);
    assert!(!job.dpo_reference_is_init_adapter());
}
