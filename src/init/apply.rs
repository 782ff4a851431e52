//! Running the scripts of [`super::rules`] against the current network namespace with
//! `iptables-save` and `iptables-restore --noflush` (one atomic transaction each).

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::Settings;
use super::rules;

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

/// The iptables front-ends to run (e.g. `iptables-legacy-save` on hosts that need it).
#[derive(Clone, Debug)]
pub struct Iptables {
    /// Prints a table (`iptables-save`).
    pub save: String,
    /// Applies a script (`iptables-restore`).
    pub restore: String,
}

impl Default for Iptables {
    fn default() -> Self {
        Self {
            save: "iptables-save".into(),
            restore: "iptables-restore".into(),
        }
    }
}

impl Iptables {
    /// The current nat table, as `iptables-save -t nat` prints it.
    pub fn current_nat(&self) -> Result<String, ApplyError> {
        let command = format!("{} -t nat", self.save);
        let out = Command::new(&self.save)
            .args(["-t", "nat"])
            .output()
            .map_err(|source| ApplyError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(ApplyError::Failed {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Feeds `script` to `iptables-restore --noflush --wait`.
    pub fn restore(&self, script: &str) -> Result<(), ApplyError> {
        let command = format!("{} --noflush --wait", self.restore);
        let spawn = |source| ApplyError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = Command::new(&self.restore)
            .args(["--noflush", "--wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).map_err(spawn)?;
        }
        let out = child.wait_with_output().map_err(spawn)?;
        if !out.status.success() {
            return Err(ApplyError::Failed {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Installs the rule set (idempotent: re-running replaces it).
    pub fn apply(&self, settings: &Settings) -> Result<String, ApplyError> {
        let script = rules::apply_script(settings, &self.current_nat()?);
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
