//! Host allocator settings for training on the CPU, where glibc's malloc would otherwise hand the
//! large activation buffers a step frees back to the kernel, and the next step fault them in again.
//! [`tune`] (at start) raises the mmap threshold to its maximum and turns trimming off;
//! [`host_training`] (once the model is loaded, on the CPU device) stops glibc mapping blocks on
//! their own. `LORA_TRAIN_MALLOC=default`, or any `MALLOC_*_` variable or `glibc.malloc` tunable
//! the user sets, leaves glibc alone. See DEVELOPERS.md, "The host allocator".

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether [`tune`] applied its settings in this process.
static APPLIED: AtomicBool = AtomicBool::new(false);

/// The largest mmap threshold glibc accepts on 64-bit targets (`HEAP_MAX_SIZE / 2`).
pub const MMAP_THRESHOLD: i32 = 32 << 20;

/// What [`tune`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tuning {
    /// The settings are in effect.
    Applied,
    /// Left alone, and why.
    Skipped(&'static str),
}

/// What a `LORA_TRAIN_MALLOC` value asks for: `Some(true)` for the settings (`tuned`, `on`, or
/// empty), `Some(false)` for glibc's own (`default`, `off`), `None` for anything else.
fn switch(value: &str) -> Option<bool> {
    match value.trim() {
        "" | "tuned" | "on" => Some(true),
        "default" | "off" => Some(false),
        _ => None,
    }
}

/// Whether to apply the settings, given the environment (`var` reads one variable). An unknown
/// `LORA_TRAIN_MALLOC` value counts as `tuned` (the default), as an unknown `LORA_TRAIN_KERNELS`
/// keeps the kernels on; [`tune`] warns about it.
pub fn plan(var: impl Fn(&str) -> Option<String>) -> Tuning {
    if var("LORA_TRAIN_MALLOC").is_some_and(|v| switch(&v) == Some(false)) {
        return Tuning::Skipped("LORA_TRAIN_MALLOC=default");
    }
    let user = [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_TOP_PAD_",
        "MALLOC_MMAP_MAX_",
    ];
    if user.iter().any(|name| var(name).is_some())
        || var("GLIBC_TUNABLES").is_some_and(|t| t.contains("glibc.malloc."))
    {
        return Tuning::Skipped("the environment sets glibc's malloc parameters");
    }
    Tuning::Applied
}

/// Applies the settings unless [`plan`] says otherwise for this process's environment.
pub fn tune() -> Tuning {
    if let Ok(v) = std::env::var("LORA_TRAIN_MALLOC") {
        if switch(&v).is_none() {
            tracing::warn!(
                "LORA_TRAIN_MALLOC: unknown value `{v}` (expected tuned or default); using tuned"
            );
        }
    }
    match plan(|name| std::env::var(name).ok()) {
        Tuning::Applied => {
            let tuning = apply();
            APPLIED.store(tuning == Tuning::Applied, Ordering::Relaxed);
            tuning
        }
        skipped => skipped,
    }
}

/// For a training loop on `device`, after loading: on the CPU, where the activations live in
/// host memory, no block gets its own mmap any more, so the blocks of 32 MiB and more that
/// [`tune`]'s threshold cannot cover are reused from step to step as well (the page faults this
/// saves are in BENCHMARKS.md). Only where [`tune`] applied its settings, so the same switches
/// turn it off.
pub fn host_training(device: &candle_core::Device) -> Tuning {
    if !device.is_cpu() {
        return Tuning::Skipped("the activations are not in host memory");
    }
    if !APPLIED.load(Ordering::Relaxed) {
        return Tuning::Skipped("the allocator settings are not in effect");
    }
    no_mmap()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> Tuning {
    // SAFETY: mallopt only sets malloc's parameters; these values are in its documented range
    // (a trim threshold of -1 turns trimming off, mallopt(3)).
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
    };
    if ok {
        Tuning::Applied
    } else {
        Tuning::Skipped("glibc refused the settings")
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn no_mmap() -> Tuning {
    // SAFETY: as in `apply`; an mmap maximum of 0 only stops new mapped blocks (blocks a
    // non-main arena's heap cannot hold are still mapped: glibc falls back to mmap there).
    if unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) } == 1 {
        Tuning::Applied
    } else {
        Tuning::Skipped("glibc refused the settings")
    }
}

/// Hands the free memory of every malloc arena back to the kernel, once the training memory is
/// freed: the settings above keep it for the next step, so a process that goes on to something
/// else (`bench --compare peft` waiting on its Python twin) would otherwise hold its peak.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only returns free pages to the kernel; live blocks are untouched.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Tuning {
    Tuning::Skipped("not glibc")
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn no_mmap() -> Tuning {
    Tuning::Skipped("not glibc")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn applies_by_default_and_leaves_the_users_settings_alone() {
        assert_eq!(plan(env(&[])), Tuning::Applied);
        assert_eq!(
            plan(env(&[("LORA_TRAIN_MALLOC", "tuned")])),
            Tuning::Applied
        );
        assert_eq!(
            plan(env(&[("GLIBC_TUNABLES", "glibc.rtld.nns=2")])),
            Tuning::Applied
        );
        // An unknown value keeps the default, as LORA_TRAIN_KERNELS does (tune warns).
        assert_eq!(
            plan(env(&[("LORA_TRAIN_MALLOC", "jemalloc")])),
            Tuning::Applied
        );
        for set in [
            [("LORA_TRAIN_MALLOC", "default")],
            [("MALLOC_TRIM_THRESHOLD_", "0")],
            [("MALLOC_MMAP_THRESHOLD_", "65536")],
            [("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")],
            [("LORA_TRAIN_MALLOC", " off ")],
        ] {
            assert!(
                matches!(plan(env(&set)), Tuning::Skipped(_)),
                "{set:?} was not left alone"
            );
        }
    }
}
