//! One way to run the `lora-train` binary from a test: its home (`LORA_TRAIN_HOME`, where
//! hosted records and the registry live) is a folder of the test build, never the user's, and
//! `--json` output is parsed with the command's stderr in the failure message.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;

/// The home every test command shares unless it asks for its own: a fresh folder per test
/// process under cargo's temp dir for integration tests.
pub fn shared_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    })
}

/// `lora-train` with a test home.
pub fn lora_train() -> Command {
    lora_train_at(shared_home())
}

/// `lora-train` with `home` as its `LORA_TRAIN_HOME`.
pub fn lora_train_at(home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("lora-train").expect("the lora-train binary is built");
    cmd.env("LORA_TRAIN_HOME", home);
    cmd
}

/// `lora-train` with no `LORA_TRAIN_HOME` and `home` as `HOME`, for the tests of the default
/// location, `$HOME/.lora-train`.
pub fn lora_train_with_home(home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("lora-train").expect("the lora-train binary is built");
    cmd.env("HOME", home).env_remove("LORA_TRAIN_HOME");
    cmd
}

/// Asserts that a finished `lora-train` succeeded, with its exit code, stdout and stderr in
/// the failure message, and gives its stdout.
pub fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.into_owned()
}

/// Runs `cmd`, asserts it succeeded, and parses its stdout as JSON.
pub fn json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("lora-train runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lora-train failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
