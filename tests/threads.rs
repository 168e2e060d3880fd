//! `lora_train::threads::settle` fixes the CPU thread count in `RAYON_NUM_THREADS` once, so
//! candle stops re-reading `/proc/cpuinfo` on every matmul. Its own test binary without
//! libtest's harness (`harness = false` in Cargo.toml): it sets an environment variable, which
//! must happen while the process has one thread, as at the start of `lora-train`'s `main`.

fn main() {
    use lora_train::threads::{count, settle};

    let candle_threads = std::env::var("CANDLE_NUM_THREADS").ok();
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        assert_eq!(
            settle(),
            None,
            "a user's RAYON_NUM_THREADS must be left alone"
        );
        println!("threads: RAYON_NUM_THREADS set by the environment, left alone ... ok");
        return;
    }
    let want = count(
        candle_core::utils::get_num_threads(),
        std::thread::available_parallelism().ok().map(|n| n.get()),
    );
    assert_eq!(settle(), Some(want));
    assert_eq!(
        std::env::var("RAYON_NUM_THREADS").ok(),
        Some(want.to_string())
    );
    // candle now takes the count from the variable (no /proc/cpuinfo read), and it is the same.
    assert_eq!(candle_core::utils::get_num_threads(), want);
    // candle's elementwise pool stays on the calling thread unless the user chose otherwise.
    assert_eq!(
        std::env::var("CANDLE_NUM_THREADS").ok().as_deref(),
        Some(candle_threads.as_deref().unwrap_or("1"))
    );
    assert_eq!(settle(), None, "a second call changes nothing");
    println!("threads: RAYON_NUM_THREADS={want}, CANDLE_NUM_THREADS={candle_threads:?} -> 1 unless set ... ok");
}
