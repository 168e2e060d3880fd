//! The `lora-train` binary: parse arguments, run, print the error chain on one line.

mod cli;

use cli::run;

fn main() -> std::process::ExitCode {
    // First, while this is the only thread: it sets RAYON_NUM_THREADS and CANDLE_NUM_THREADS.
    let threads = lora_train::threads::settle();
    // `lora-train ... | head` ends quietly, as other command-line tools do, instead of a panic
    // at the next print.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::parse();
    let cli_verbose = cli.verbose;
    let default = match cli.verbose {
        0 => "warn,lora_train=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    // Before any large allocation; after the logger, which reports an unknown switch value.
    let malloc = lora_train::alloc::tune();
    tracing::debug!("host allocator: {malloc:?}; CPU threads set: {threads:?}");
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(cli::Stopped(signal)) = e.downcast_ref() {
                // The command has said where it stopped and how to continue.
                return std::process::ExitCode::from(signal.exit_code());
            }
            // One line: Candle appends a backtrace to its messages when RUST_BACKTRACE is set.
            // A cause that its error's message already ends with (`{path}: {source}`) is not
            // repeated.
            let mut line = String::new();
            for cause in e.chain() {
                let text = cause.to_string();
                let text = text.lines().next().unwrap_or("").trim_end();
                if line.is_empty() {
                    line = text.to_string();
                } else if !line.ends_with(text) {
                    line = format!("{line}: {text}");
                }
            }
            eprintln!("error: {line}");
            if cli_verbose > 0 {
                eprintln!("{e:?}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
