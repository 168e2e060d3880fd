//! Ctrl-C during training saves a checkpoint at the current step and exits cleanly; the run
//! then resumes from it.

use crate::common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigint_checkpoints_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let job = tmp.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[model]\nsource = \"{}\"\ndevice = \"cpu\"\n[data]\ntrain = \"{}\"\nmax_seq_len = 128\n\
             [train]\nmax_steps = 100000\nmicro_batch_size = 2\nlr = 1e-3\n[output]\ndir = \"{}\"\n",
            common::fixtures().join("tiny-llama").display(),
            common::fixtures().join("chats.jsonl").display(),
            out.display()
        ),
    )
    .unwrap();
    let bin = assert_cmd::cargo::cargo_bin("lora-train");
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&job)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a few steps are logged.
    let metrics = out.join("metrics.jsonl");
    let start = Instant::now();
    loop {
        let n = std::fs::read_to_string(&metrics)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(code.success(), "exit {code:?}: {stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let ckpts = lora_train::train::checkpoint::list_checkpoints(&out).unwrap();
    let (step, dir) = ckpts.last().expect("a checkpoint on Ctrl-C").clone();
    assert!(step >= 3);
    assert_eq!(
        lora_train::train::checkpoint::read_state(&dir)
            .unwrap()
            .step,
        step
    );
    // Resume and do one more step.
    let resumed = Command::new(&bin)
        .arg("--config")
        .arg(&job)
        .args(["--resume", "--stop-after", "1"])
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let ckpts = lora_train::train::checkpoint::list_checkpoints(&out).unwrap();
    assert_eq!(ckpts.last().unwrap().0, step + 1);
}
