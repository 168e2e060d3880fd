//! The CPU thread count, worked out once per process. Unless `RAYON_NUM_THREADS` is set, candle
//! re-reads and parses `/proc/cpuinfo` on every CPU matmul to find it; [`settle`] works it out once
//! at start (candle's own count, physical cores, capped at `available_parallelism`) and puts it in
//! `RAYON_NUM_THREADS`, where candle and rayon's global pool both read it. It also keeps candle's
//! second pool, for elementwise ops, to the calling thread (`CANDLE_NUM_THREADS=1`): its workers
//! spin after every op on the cores the next GEMM needs. Values the user set are left alone. See
//! DEVELOPERS.md, "The CPU thread count".

/// The thread count for candle's and rayon's CPU work: candle's `default` capped at the CPUs the
/// process may use (`available`, when known), at least 1.
pub fn count(default: usize, available: Option<usize>) -> usize {
    available.map_or(default, |a| default.min(a)).max(1)
}

/// Sets `RAYON_NUM_THREADS` to [`count`] and `CANDLE_NUM_THREADS` to 1, each unless the
/// environment already has it, and returns the count it set in `RAYON_NUM_THREADS`. Call it first
/// thing in `main`, while the process has one thread: it sets environment variables.
pub fn settle() -> Option<usize> {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return None;
    }
    let n = count(
        candle_core::utils::get_num_threads(),
        std::thread::available_parallelism().ok().map(|n| n.get()),
    );
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn the_count_is_candles_capped_at_the_available_cpus() {
        assert_eq!(count(8, Some(16)), 8); // hyper-threads: physical cores
        assert_eq!(count(32, Some(2)), 2); // a container limited to 2 CPUs of a large host
        assert_eq!(count(4, None), 4);
        assert_eq!(count(0, Some(0)), 1);
    }
}
