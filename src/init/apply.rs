//! Running the scripts of [`super::rules`] against the current network namespace with
//! `iptables-save` and `iptables-restore --noflush` (one atomic transaction each), and the
//! same with `ip6tables-save` / `ip6tables-restore` for IPv6.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::rules;
use super::{Family, Settings};

/// Why the rules could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running {command}: {source} (is iptables installed and on PATH?)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
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

impl Iptables {
    /// The default IPv6 front-ends (`ip6tables-save`, `ip6tables-restore`).
    pub fn default_v6() -> Self {
        Self {
            family: Family::V6,
            save: "ip6tables-save".into(),
            restore: "ip6tables-restore".into(),
        }
    }

    /// `Ok` when both front-ends can be started; otherwise why not.
    pub fn available(&self) -> Result<(), ApplyError> {
        for bin in [&self.save, &self.restore] {
            run(bin, &["--version"], None)?;
        }
        Ok(())
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

/// Whether IPv6 is enabled in the current network namespace, from [`DISABLE_IPV6_SYSCTL`]
/// (`Err` with the reason when it is not, or cannot be told).
pub fn ipv6_enabled() -> Result<(), String> {
    match std::fs::read_to_string(DISABLE_IPV6_SYSCTL) {
        Ok(v) if v.trim() == "0" => Ok(()),
        Ok(v) => Err(format!(
            "IPv6 is disabled in this network namespace ({DISABLE_IPV6_SYSCTL} is {:?})",
            v.trim()
        )),
        Err(e) => Err(format!(
            "IPv6 is not available in this network namespace (reading {DISABLE_IPV6_SYSCTL}: {e})"
        )),
    }
}

/// Runs `bin args`, feeding `stdin` when given; its stdout on success, otherwise an error that
/// names the command and carries its stderr.
fn run(bin: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
    let command = format!("{bin} {}", args.join(" "));
    let spawn = |source| ApplyError::Spawn {
        command: command.clone(),
        source,
    };
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
        .map_err(spawn)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(ApplyError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
