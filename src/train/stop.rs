//! Stop requests from outside the process: SIGINT (Ctrl-C) and SIGTERM (what schedulers and
//! `docker stop` send) set one flag, which the trainer polls between steps, between the batches
//! of a validation and between the replies of a report. The first signal is recorded, so that
//! the binary exits with its code (128 + its number, as a shell reports a process it killed).
//! On Unix this is a `sigaction` handler of our own; elsewhere the `ctrlc` crate's Ctrl-C.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

/// A signal that asks a run to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
    /// SIGTERM: a scheduler, `kill` or `docker stop`.
    Terminate,
}

impl StopSignal {
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;

    /// The signal's name, as `kill -l` spells it.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    /// The exit code of a process this signal stopped: 130 for SIGINT, 143 for SIGTERM.
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 128 + Self::SIGINT as u8,
            StopSignal::Terminate => 128 + Self::SIGTERM as u8,
        }
    }

    fn from_number(n: i32) -> Option<Self> {
        match n {
            Self::SIGINT => Some(StopSignal::Interrupt),
            Self::SIGTERM => Some(StopSignal::Terminate),
            _ => None,
        }
    }
}

/// The stop flag the handler sets; one per process, as the handler is.
static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
/// The number of the first stop signal that arrived, 0 before any.
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Called from the signal handler: only atomic operations, which are async-signal-safe.
fn record(signal: i32) {
    let _ = FIRST_SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    if let Some(flag) = FLAG.get() {
        flag.store(true, Ordering::SeqCst);
    }
}

/// Installs the handler of SIGINT and SIGTERM (once per process) and returns the stop flag
/// both set. A signal no longer ends the process: the run saves a checkpoint and returns.
pub fn install_stop_handler() -> Arc<AtomicBool> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let flag = flag().clone();
    INSTALLED.call_once(|| {
        if let Err(e) = os::install() {
            tracing::warn!("cannot handle Ctrl-C and SIGTERM ({e}); a signal ends the run without a checkpoint");
        }
    });
    flag
}

/// The first stop signal that arrived since the handler was installed, if any.
pub fn stop_signal() -> Option<StopSignal> {
    StopSignal::from_number(FIRST_SIGNAL.load(Ordering::SeqCst))
}

#[cfg(unix)]
mod os {
    extern "C" fn on_signal(signal: libc::c_int) {
        super::record(signal);
    }

    pub fn install() -> std::io::Result<()> {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is a valid value to fill in; the handler only performs
            // atomic operations (async-signal-safe), and SA_RESTART resumes the file I/O a
            // signal interrupts instead of failing it with EINTR.
            let rc = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(not(unix))]
mod os {
    pub fn install() -> std::io::Result<()> {
        ctrlc::set_handler(|| super::record(super::StopSignal::SIGINT))
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_128_plus_the_signal_number() {
        assert_eq!(StopSignal::Interrupt.exit_code(), 130);
        assert_eq!(StopSignal::Terminate.exit_code(), 143);
        assert_eq!(StopSignal::from_number(15), Some(StopSignal::Terminate));
        assert_eq!(StopSignal::from_number(9), None);
    }

    #[cfg(unix)]
    #[test]
    fn sigterm_sets_the_flag_and_is_recorded_first() {
        let flag = install_stop_handler();
        assert_eq!(stop_signal(), None);
        // SAFETY: raise only delivers the signal to this thread; our handler is installed.
        unsafe {
            libc::raise(libc::SIGTERM);
            libc::raise(libc::SIGINT);
        }
        assert!(flag.load(Ordering::SeqCst));
        assert_eq!(stop_signal(), Some(StopSignal::Terminate));
        assert!(Arc::ptr_eq(&flag, &install_stop_handler()));
    }
}
