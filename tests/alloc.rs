//! The host allocator settings (`lora_train::alloc`) in effect: a workload that frees and
//! reallocates large buffers, as training steps do, stops faulting in fresh pages once they are
//! applied. Its own test binary without libtest's harness (`harness = false` in Cargo.toml):
//! the settings are process-wide, and the training binary applies them to the main thread's
//! allocations, which is where this runs.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    use lora_train::alloc::{plan, tune, Tuning};

    /// Minor page faults of this thread so far.
    fn faults() -> i64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a whole rusage into the pointer it is given.
        let usage = unsafe {
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
            usage.assume_init()
        };
        usage.ru_minflt
    }
    /// Ten "steps", each holding four 24 MiB buffers at once, written, then freeing them.
    fn steps() -> i64 {
        let before = faults();
        for step in 0..10u8 {
            let bufs: Vec<Vec<u8>> = (0..4).map(|_| vec![step | 1; 24 << 20]).collect();
            std::hint::black_box(&bufs);
        }
        faults() - before
    }
    if let Tuning::Skipped(why) = plan(|name| std::env::var(name).ok()) {
        println!("alloc: skipped ({why})");
        return;
    }
    let untuned = steps();
    assert_eq!(tune(), Tuning::Applied);
    steps(); // the first step after tuning may still fault its buffers in
    let tuned = steps();
    let pages = (4 * (24 << 20) / 4096) as i64;
    // glibc's defaults give back the 96 MiB each step frees: ~24k faults a step.
    assert!(untuned > 5 * pages, "untuned: {untuned} faults");
    assert!(
        tuned < pages / 10,
        "tuned: {tuned} faults over 10 steps (untuned: {untuned})"
    );
    println!(
        "alloc: freed buffers reused: {untuned} page faults over 10 steps with glibc's \
         defaults, {tuned} tuned ... ok"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("alloc: skipped, not glibc");
}
