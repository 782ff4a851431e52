//! Running the scripts of [`super::rules`] against the current network namespace with
//! `iptables-save` and `iptables-restore --noflush` (one atomic transaction each), and the
//! same with `ip6tables-save` / `ip6tables-restore` for IPv6.

use std::io::{Read, Write as _};
use std::process::{Command, Stdio};

use super::rules;
use super::{Family, Settings};

/// Most bytes of a tool's stdout kept (an `iptables-save` nat table is a few KiB; a pod's
/// table that is larger than this is not one we wrote).
pub const MAX_STDOUT_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes of a tool's stderr kept for the error message (the rest is read and dropped).
pub const MAX_STDERR_BYTES: usize = 8 * 1024;

/// Why the rules could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The program could not be started at all.
    #[error("running {command}: {source} (is it installed and on PATH?)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// The program ran and failed; `stderr` is its own message.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    /// The program exited successfully without reading the whole script, so nothing says it
    /// applied it.
    #[error("{command} exited ({status}) before reading the whole script ({source}){stderr}")]
    Unread {
        command: String,
        status: String,
        source: std::io::Error,
        /// `": <its stderr>"`, or empty when it printed nothing.
        stderr: String,
    },
    /// Talking to the running program failed (its pipes), or it printed more than
    /// [`MAX_STDOUT_BYTES`].
    #[error("{command}: {msg}")]
    Io { command: String, msg: String },
}

/// The iptables front-ends to run for one family (e.g. `iptables-legacy-save` on hosts that
/// need it).
#[derive(Clone, Debug)]
pub struct Iptables {
    /// Which rule set these front-ends take.
    pub family: Family,
    /// Prints a table (`iptables-save`).
    pub save: String,
    /// Applies a script (`iptables-restore`).
    pub restore: String,
}

impl Default for Iptables {
    fn default() -> Self {
        Self {
            family: Family::V4,
            save: "iptables-save".into(),
            restore: "iptables-restore".into(),
        }
    }
}

/// Where the kernel says whether IPv6 is disabled in the current network namespace.
pub const DISABLE_IPV6_SYSCTL: &str = "/proc/sys/net/ipv6/conf/all/disable_ipv6";

/// What [`Iptables::available`] asks `restore --noflush --test` to check: the nat table, with
/// no chain and no rule, so even a front-end that ignored `--test` would change nothing.
pub const PROBE_SCRIPT: &str = "*nat\nCOMMIT\n";

impl Iptables {
    /// The default IPv6 front-ends (`ip6tables-save`, `ip6tables-restore`).
    pub fn default_v6() -> Self {
        Self {
            family: Family::V6,
            save: "ip6tables-save".into(),
            restore: "ip6tables-restore".into(),
        }
    }

    /// `Ok` when this family's nat table can be read and written here; otherwise why not (the
    /// tool's own message). Reads the table with `save -t nat` and has `restore --test` check
    /// [`PROBE_SCRIPT`], which changes nothing: a front-end that merely starts (`--version`) may
    /// still lack the kernel's nat table or the rights to use it.
    pub fn available(&self) -> Result<(), ApplyError> {
        self.current_nat()?;
        run(&self.restore, &["--noflush", "--test"], Some(PROBE_SCRIPT)).map(drop)
    }

    /// The current nat table, as `iptables-save -t nat` (or `ip6tables-save`) prints it.
    pub fn current_nat(&self) -> Result<String, ApplyError> {
        run(&self.save, &["-t", "nat"], None)
    }

    /// Feeds `script` to `iptables-restore --noflush --wait`.
    pub fn restore(&self, script: &str) -> Result<(), ApplyError> {
        run(&self.restore, &["--noflush", "--wait"], Some(script)).map(drop)
    }

    /// Installs this family's rule set (idempotent: re-running replaces it).
    pub fn apply(&self, settings: &Settings) -> Result<String, ApplyError> {
        let script = rules::apply_script(settings, self.family, &self.current_nat()?);
        self.restore(&script)?;
        Ok(script)
    }

    /// Removes every Palisade chain and jump; returns the script run, if any was needed.
    pub fn cleanup(&self) -> Result<Option<String>, ApplyError> {
        let script = rules::cleanup_script(&self.current_nat()?);
        if let Some(script) = &script {
            self.restore(script)?;
        }
        Ok(script)
    }
}

/// Whether the current network namespace carries IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipv6State {
    /// IPv6 is on: IPv6 traffic can flow and must be captured.
    Enabled,
    /// IPv6 is switched off here, or the kernel has none: no IPv6 traffic can flow.
    Disabled(String),
    /// The kernel's answer could not be read; treat as enabled where that is the safe side.
    Unknown(String),
}

/// Reads [`DISABLE_IPV6_SYSCTL`] for the current network namespace.
pub fn ipv6_state() -> Ipv6State {
    match std::fs::read_to_string(DISABLE_IPV6_SYSCTL) {
        Ok(v) if v.trim() == "0" => Ipv6State::Enabled,
        Ok(v) if v.trim() == "1" => Ipv6State::Disabled(format!(
            "IPv6 is disabled in this network namespace ({DISABLE_IPV6_SYSCTL} is 1)"
        )),
        Ok(v) => Ipv6State::Unknown(format!(
            "{DISABLE_IPV6_SYSCTL} holds {:?}, not 0 or 1",
            v.trim()
        )),
        // No such file: the kernel has no IPv6 (ipv6.disable=1 or no module).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ipv6State::Disabled(format!(
            "the kernel has no IPv6 here ({DISABLE_IPV6_SYSCTL} does not exist)"
        )),
        Err(e) => Ipv6State::Unknown(format!("reading {DISABLE_IPV6_SYSCTL}: {e}")),
    }
}

/// Runs `bin args`, feeding `stdin` when given; its stdout on success, otherwise an error that
/// names the command and carries its own stderr.
///
/// stdin is written, and stdout and stderr are read, concurrently, so a tool that prints before
/// it has read its input cannot deadlock us; the child is always waited for (never left a
/// zombie), whatever went wrong while talking to it.
fn run(bin: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
    let command = format!("{bin} {}", args.join(" "));
    let mut child = Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    let input = child.stdin.take().zip(stdin);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (written, out, err) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || match input {
            // Dropping the pipe after the write closes it: the tool sees the end of its input.
            Some((mut pipe, text)) => pipe.write_all(text.as_bytes()),
            None => Ok(()),
        });
        let err_reader = scope.spawn(move || read_capped(stderr, MAX_STDERR_BYTES));
        let out = read_capped(stdout, MAX_STDOUT_BYTES);
        (joined(writer.join()), out, joined(err_reader.join()))
    });
    // Always reaped, before any error is returned.
    let status = child.wait().map_err(|e| ApplyError::Io {
        command: command.clone(),
        msg: format!("waiting for it: {e}"),
    })?;
    let (err_text, _) = err.unwrap_or_default();
    let err_text = String::from_utf8_lossy(&err_text).trim().to_string();
    if !status.success() {
        return Err(ApplyError::Failed {
            command,
            status: status.to_string(),
            stderr: if err_text.is_empty() {
                "(it printed nothing on stderr)".into()
            } else {
                err_text
            },
        });
    }
    if let Err(source) = written {
        return Err(ApplyError::Unread {
            command,
            status: status.to_string(),
            source,
            stderr: if err_text.is_empty() {
                String::new()
            } else {
                format!(": {err_text}")
            },
        });
    }
    let io = |msg: String| ApplyError::Io {
        command: command.clone(),
        msg,
    };
    let (out, complete) = out.map_err(|e| io(format!("reading its output: {e}")))?;
    if !complete {
        return Err(io(format!(
            "printed more than {MAX_STDOUT_BYTES} bytes; not a table this tool wrote"
        )));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A pipe thread's result; a panic there (none is expected) is an I/O error, not ours.
fn joined<T>(r: std::thread::Result<std::io::Result<T>>) -> std::io::Result<T> {
    r.unwrap_or_else(|_| Err(std::io::Error::other("pipe thread panicked")))
}

/// Reads `pipe` to its end, keeping at most `cap` bytes: (kept, whether that was all). The rest
/// is read and dropped so the child never blocks on a full pipe.
fn read_capped(pipe: Option<impl Read>, cap: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let Some(mut pipe) = pipe else {
        return Ok((Vec::new(), true));
    };
    let mut kept = Vec::new();
    (&mut pipe).take(cap as u64).read_to_end(&mut kept)?;
    let rest = std::io::copy(&mut pipe, &mut std::io::sink())?;
    Ok((kept, rest == 0))
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
