//! The host allocator settings (`lora_train::alloc`) in effect: a workload that frees and
//! reallocates large buffers, as training steps do, stops faulting in fresh pages once they are
//! applied, blocks above glibc's largest mmap threshold too once `alloc::host_training` is. Its own
//! test binary without libtest's harness (`harness = false` in Cargo.toml): the settings are
//! process-wide, and the training binary applies them to the main thread's allocations, which is
//! where this runs.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    use lora_train::alloc::{host_training, plan, tune, Tuning};

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
    /// Ten "steps", each holding four buffers of `mib` MiB at once, written, then freeing them.
    fn steps(mib: usize) -> i64 {
        let before = faults();
        for step in 0..10u8 {
            let bufs: Vec<Vec<u8>> = (0..4).map(|_| vec![step | 1; mib << 20]).collect();
            std::hint::black_box(&bufs);
        }
        faults() - before
    }
    if let Tuning::Skipped(why) = plan(|name| std::env::var(name).ok()) {
        println!("alloc: skipped ({why})");
        return;
    }
    let pages = |mib: i64| 4 * (mib << 20) / 4096;
    let cpu = candle_core::Device::Cpu;
    assert!(
        matches!(host_training(&cpu), Tuning::Skipped(_)),
        "before tune"
    );
    let untuned = steps(24);
    assert_eq!(tune(), Tuning::Applied);
    steps(24); // the first step after tuning may still fault its buffers in
    let tuned = steps(24);
    // glibc's defaults give back the 96 MiB each step frees: ~24k faults a step.
    assert!(untuned > 5 * pages(24), "untuned: {untuned} faults");
    assert!(
        tuned < pages(24) / 10,
        "tuned: {tuned} faults over 10 steps (untuned: {untuned})"
    );
    // Blocks over the largest threshold are still mapped, and unmapped when freed...
    let mapped = steps(40);
    assert!(
        mapped > 5 * pages(40),
        "40 MiB blocks, tuned: {mapped} faults"
    );
    // ... until host_training: then they come from the heap and are kept too.
    assert_eq!(host_training(&cpu), Tuning::Applied);
    steps(40);
    let heap = steps(40);
    assert!(
        heap < pages(40) / 10,
        "40 MiB blocks after host_training: {heap} faults over 10 steps (before: {mapped})"
    );
    // A block larger than another thread's arena heap (64 MiB) still allocates there (glibc
    // maps it after all).
    let sum = std::thread::spawn(|| {
        let big = vec![1u8; 100 << 20];
        big.iter().map(|&b| b as usize).sum::<usize>()
    })
    .join()
    .unwrap();
    assert_eq!(sum, 100 << 20);
    println!(
        "alloc: freed buffers reused: {untuned} page faults over 10 steps with glibc's \
         defaults, {tuned} tuned; 40 MiB buffers {mapped} tuned, {heap} after host_training ... ok"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("alloc: skipped, not glibc");
}
