//! A small lab of network namespaces on one Linux machine: a "hub" namespace holding a bridge
//! (where the standalone control plane listens) and one namespace per "pod", each joined to the
//! bridge by a veth pair. Used by `palisade demo` and by the end-to-end tests of the proxy.
//!
//! Everything the lab creates is registered in a [`Cleanup`] as it is created, so it is removed
//! whatever happens: when the lab is dropped (success, error, panic) and, through a cloned
//! handle, from a signal handler on Ctrl-C. Names carry a prefix chosen by the caller, so a run
//! that was killed outright (SIGKILL) is cleaned up by the next one ([`Lab::new`] first removes
//! namespaces with its prefix).

use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The lab's /24: the hub's bridge is .1, pods get the addresses they ask for.
pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const PREFIX_LEN: u8 = 24;

/// Everything to undo, in reverse order of creation. Cheap to clone; idempotent.
#[derive(Clone, Default)]
pub struct Cleanup {
    inner: Arc<Mutex<CleanupState>>,
}

#[derive(Default)]
struct CleanupState {
    namespaces: Vec<String>,
    processes: Vec<(String, Child)>,
    dirs: Vec<PathBuf>,
    done: bool,
}

impl Cleanup {
    fn lock(&self) -> std::sync::MutexGuard<'_, CleanupState> {
        // A panic while holding the lock must not stop the cleanup.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every process (SIGTERM, then SIGKILL after 3 s), deletes the namespaces (which
    /// removes their links and iptables rules with them) and the directories. Runs once.
    pub fn run(&self) {
        let mut state = self.lock();
        if state.done {
            return;
        }
        state.done = true;
        for (_, child) in state.processes.iter_mut().rev() {
            terminate(child);
        }
        for ns in state.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for dir in &state.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// SIGTERM, wait up to 3 s, then SIGKILL; always reaped.
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A "pod": a network namespace with one interface on the lab's bridge.
#[derive(Clone, Debug)]
pub struct Pod {
    /// The namespace's name (`ip netns exec <netns>`).
    pub netns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

impl Pod {
    /// A command that runs `program` inside this pod's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }

    /// Runs `f` on a thread that has entered this pod's network namespace (sockets it creates
    /// belong to the pod and may be used from any thread afterwards).
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        enter(&self.netns, f)
    }
}

/// Runs `f` on a thread inside network namespace `netns`.
pub fn enter<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || -> anyhow::Result<T> {
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {path}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {netns} panicked"))?
}

/// The lab: the hub namespace with its bridge, the pods, supervised processes, a scratch
/// directory. Dropping it removes everything.
pub struct Lab {
    prefix: String,
    hub: Pod,
    dir: PathBuf,
    cleanup: Cleanup,
}

impl Lab {
    /// Creates the hub namespace `<prefix>-hub` with bridge `br0` at [`HUB_IP`], and a scratch
    /// directory `dir` (created; removed with the lab). Leftovers of an earlier run with the
    /// same prefix are removed first. Everything is registered in `cleanup` as it is made, so
    /// a clone held elsewhere (a signal handler) can remove it even while this is running.
    pub fn new(prefix: &str, dir: &Path, cleanup: Cleanup) -> anyhow::Result<Self> {
        remove_leftovers(prefix);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        cleanup.lock().dirs.push(dir.to_path_buf());
        let hub = Pod {
            netns: format!("{prefix}-hub"),
            ip: HUB_IP,
        };
        let lab = Lab {
            prefix: prefix.to_string(),
            hub,
            dir: dir.to_path_buf(),
            cleanup,
        };
        lab.add_netns(&lab.hub.netns)?;
        let hub = &lab.hub.netns;
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            hub,
            "addr",
            "add",
            &format!("{HUB_IP}/{PREFIX_LEN}"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", hub, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    fn add_netns(&self, name: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", name])?;
        {
            let mut state = self.cleanup.lock();
            if state.done {
                // Cleaned up meanwhile (Ctrl-C): undo at once, stop here.
                let _ = Command::new("ip").args(["netns", "del", name]).output();
                bail!("interrupted");
            }
            state.namespaces.push(name.to_string());
        }
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// The hub: the bridge's namespace, where the control plane runs.
    pub fn hub(&self) -> &Pod {
        &self.hub
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A handle that removes everything (for a signal handler).
    pub fn cleanup(&self) -> Cleanup {
        self.cleanup.clone()
    }

    /// Adds pod `<prefix>-<name>` at `ip` on the bridge, with a default route through the hub
    /// (so Service VIPs, which no interface holds, are routable and the capture sees them).
    pub fn add_pod(&self, name: &str, ip_addr: Ipv4Addr) -> anyhow::Result<Pod> {
        let pod = Pod {
            netns: format!("{}-{name}", self.prefix),
            ip: ip_addr,
        };
        self.add_netns(&pod.netns)?;
        // Interface names are at most 15 bytes: keep the hub side short and unique per pod.
        let host_side = format!("v{}", ip_addr.octets()[3]);
        let hub = &self.hub.netns;
        ip(&[
            "-n", hub, "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns",
            &pod.netns,
        ])?;
        ip(&["-n", hub, "link", "set", &host_side, "master", "br0", "up"])?;
        let ns = &pod.netns;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip_addr}/{PREFIX_LEN}"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &HUB_IP.to_string(),
        ])?;
        Ok(pod)
    }

    /// Starts `command` (its output to `<dir>/<name>.log`) and keeps it until cleanup.
    pub fn spawn(&self, name: &str, mut command: Command) -> anyhow::Result<()> {
        let log_path = self.log_path(name);
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut state = self.cleanup.lock();
        if state.done {
            terminate(&mut child);
            bail!("interrupted");
        }
        state.processes.push((name.to_string(), child));
        Ok(())
    }

    /// Where [`spawn`](Self::spawn) writes `name`'s output.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The last `max` bytes of `name`'s log (for error messages).
    pub fn log_tail(&self, name: &str, max: usize) -> String {
        let mut text = String::new();
        if let Ok(f) = File::open(self.log_path(name)) {
            let _ = f.take(16 * 1024 * 1024).read_to_string(&mut text);
        }
        let start = text.len().saturating_sub(max);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// The process id of `name`, while the lab keeps it.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let state = self.cleanup.lock();
        state
            .processes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Whether process `name` has exited (and how), without waiting.
    pub fn exited(&self, name: &str) -> Option<std::process::ExitStatus> {
        let mut state = self.cleanup.lock();
        state
            .processes
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    /// Sends SIGTERM to process `name` and waits up to `timeout` for it to exit.
    pub fn stop(
        &self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let mut state = self.cleanup.lock();
        let Some((_, child)) = state.processes.iter_mut().find(|(n, _)| n == name) else {
            bail!("no process {name}");
        };
        let pid = i32::try_from(child.id()).context("pid")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .context("SIGTERM")?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup.run();
    }
}

/// Deletes namespaces named `<prefix>-*` (a previous run killed before it could clean up).
fn remove_leftovers(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    let mine = format!("{prefix}-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&mine) {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Why the lab cannot run here, if it cannot: root and the tools it runs.
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "it needs root (network namespaces, iptables): run it with sudo or as root".into(),
        );
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("iptables-restore", "--version", "iptables"),
        ("ip6tables-restore", "--version", "iptables"),
        ("setpriv", "--version", "util-linux"),
    ] {
        if !Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!(
                "{tool} is not installed (Debian: apt-get install -y {package})"
            ));
        }
    }
    None
}
