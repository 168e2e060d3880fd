//! The processes the worker runs jobs in: children of this server that die with it (Linux's
//! parent-death signal), in their own process group (so a Ctrl-C at the server's terminal
//! reaches the server only, which then stops them in order), recognised later by pid and
//! start time, so that a reused pid is never taken for a job's process.

use std::process::{Child, Command};

/// Starts `cmd` as a job's process: its own process group, and SIGTERM when this process
/// dies (Linux), which makes a training run save its checkpoint and stop.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        #[cfg(target_os = "linux")]
        // SAFETY: only async-signal-safe calls (getpid, prctl, getppid, kill) between fork and
        // exec.
        let parent = unsafe { libc::getpid() };
        // SAFETY: as above; setpgid and prctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                #[cfg(target_os = "linux")]
                {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The server died between fork and prctl: stop now, as the signal would.
                    if libc::getppid() != parent {
                        libc::kill(libc::getpid(), libc::SIGTERM);
                    }
                }
                Ok(())
            });
        }
    }
    cmd.spawn()
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat`'s 22nd field);
/// `None` when it does not exist or this system has no `/proc`.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count fields after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `pid` that started at `start` still runs (a zombie does not).
pub fn alive(pid: u32, start: Option<u64>) -> bool {
    if std::path::Path::new("/proc/self/stat").exists() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next().map(String::from))
            });
        return match state.as_deref() {
            None | Some("Z") | Some("X") => false,
            Some(_) => start.is_none() || start_time(pid) == start,
        };
    }
    #[cfg(unix)]
    // SAFETY: signal 0 only checks that the process exists.
    return unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    #[cfg(not(unix))]
    false
}

/// Sends SIGINT (the stop a Ctrl-C sends: checkpoint, then exit 130) or SIGTERM to `pid`.
pub fn signal(pid: u32, terminate: bool) {
    #[cfg(unix)]
    {
        let sig = match terminate {
            true => libc::SIGTERM,
            false => libc::SIGINT,
        };
        // SAFETY: kill has no memory effects; a gone pid only makes it fail.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
    #[cfg(not(unix))]
    let _ = (pid, terminate);
}

/// The exit code a shell would report: the code, or 128 + the signal that killed it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return 128 + sig;
        }
    }
    status.code().unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_process_is_known_by_pid_and_start_time_until_it_ends() {
        let mut child = spawn(Command::new("sleep").arg("30")).unwrap();
        let pid = child.id();
        let start = start_time(pid);
        assert!(start.is_some());
        assert!(alive(pid, start));
        assert!(
            !alive(pid, start.map(|s| s + 1)),
            "another start time is another process"
        );
        signal(pid, true);
        let status = child.wait().unwrap();
        assert_eq!(exit_code(status), 143);
        assert!(!alive(pid, start));
    }
}
