//! A running mesh in a [`Lab`]: the standalone control plane in the hub namespace, and pods
//! started the way the injector starts them (`palisade init`, then `palisade proxy` as uid 1337
//! with the injected environment, a token and the trust bundle at their mount paths' stand-ins).
//! `palisade demo` tells a story with it; the proxy's end-to-end tests assert on it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::app;
use super::lab::{self, Lab, Pod};

/// The proxy's admin port.
pub const ADMIN_PORT: u16 = 15020;
/// The control plane's monitor port (inside the hub namespace, on loopback).
pub const MONITOR_PORT: u16 = 15014;
/// The control plane's gRPC port (CA, SDS, ADS) on the hub's bridge address.
pub const GRPC_PORT: u16 = 15012;
/// The proxy's user: `palisade init` leaves its own traffic alone.
pub const PROXY_UID: u32 = 1337;

/// The control plane and its directories.
pub struct Mesh {
    /// The namespaces and processes (removed on drop).
    pub lab: Lab,
    exe: PathBuf,
    state: PathBuf,
    config: PathBuf,
    secrets: PathBuf,
}

impl Mesh {
    /// Creates the lab under `dir` (namespaces `<prefix>-*`), starts `exe controller
    /// --standalone` in the hub with `controller_args` added, and waits until it is ready.
    /// `manifests` are written to the config directory first (file name → YAML). What it
    /// creates is registered in `cleanup` (see [`Lab::new`]).
    pub fn start(
        prefix: &str,
        dir: &Path,
        exe: &Path,
        controller_args: &[&str],
        manifests: &[(&str, String)],
        cleanup: lab::Cleanup,
    ) -> anyhow::Result<Mesh> {
        let lab = Lab::new(prefix, dir, cleanup)?;
        let mesh = Mesh {
            exe: exe.to_path_buf(),
            state: dir.join("state"),
            config: dir.join("config"),
            secrets: dir.join("secrets"),
            lab,
        };
        for d in [&mesh.state, &mesh.config, &mesh.secrets] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        for (file, yaml) in manifests {
            mesh.write(file, yaml)?;
        }
        let mut controller = mesh.lab.hub().command(exe);
        controller
            .args(["controller", "--standalone", "--state-dir"])
            .arg(&mesh.state)
            .arg("--config-dir")
            .arg(&mesh.config)
            .args(["--grpc-addr", &format!("{}:{GRPC_PORT}", lab::HUB_IP)])
            .args(["--webhook-addr", "127.0.0.1:15017"])
            .args(["--monitor-addr", &format!("127.0.0.1:{MONITOR_PORT}")])
            .args(controller_args);
        mesh.lab.spawn("controller", controller)?;
        let hub = mesh.lab.hub().clone();
        mesh.wait_until("controller", Duration::from_secs(60), || {
            get(&hub, MONITOR_PORT, "/readyz").is_ok_and(|(status, _)| status == 200)
        })?;
        // The bundle where the injector mounts it, readable by the proxies' uid.
        std::fs::copy(mesh.state.join("root-cert.pem"), mesh.root_cert())
            .context("copying root-cert.pem")?;
        Ok(mesh)
    }

    /// Writes `file` into the config directory atomically (the control plane never reads half
    /// a file).
    pub fn write(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let path = self.config.join(file);
        let tmp = self.config.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// Removes `file` from the config directory.
    pub fn remove(&self, file: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.config.join(file)).with_context(|| format!("removing {file}"))
    }

    /// The trust bundle handed to proxies.
    pub fn root_cert(&self) -> PathBuf {
        self.secrets.join("root-cert.pem")
    }

    /// The control plane's state directory (CA material).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// A pod without a proxy.
    pub fn add_pod(&self, name: &str, ip: Ipv4Addr) -> anyhow::Result<Pod> {
        self.lab.add_pod(name, ip)
    }

    /// A meshed pod: `palisade init` in its namespace, then `palisade proxy` as uid 1337 with
    /// the environment the injector writes (`POD_NAME` = `name`, namespace `namespace`,
    /// service account `service_account`), logging to `proxy-<name>.log`. Does not wait for
    /// it; see [`Mesh::wait_healthy`].
    pub fn add_meshed_pod(
        &self,
        name: &str,
        ip: Ipv4Addr,
        namespace: &str,
        service_account: &str,
        extra_proxy_args: &[&str],
    ) -> anyhow::Result<Pod> {
        let pod = self.lab.add_pod(name, ip)?;
        let token = self.secrets.join(format!("{name}.token"));
        let out = Command::new(&self.exe)
            .args(["token", "--state-dir"])
            .arg(&self.state)
            .args([
                "--namespace",
                namespace,
                "--service-account",
                service_account,
            ])
            .output()
            .context("palisade token")?;
        if !out.status.success() {
            bail!("palisade token: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(&token, &out.stdout)?;
        let out = pod.command(&self.exe).arg("init").output()?;
        if !out.status.success() {
            bail!(
                "palisade init in {}: {}",
                pod.netns,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let uid = PROXY_UID.to_string();
        let mut proxy = pod.command("setpriv");
        proxy
            .args(["--reuid", &uid, "--regid", &uid, "--clear-groups"])
            .args(["--inh-caps=-all", "--bounding-set=-all"])
            .arg(&self.exe)
            .arg("proxy")
            .arg("--token-file")
            .arg(&token)
            .arg("--ca-root")
            .arg(self.root_cert())
            .args(extra_proxy_args)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", namespace)
            .env("INSTANCE_IP", ip.to_string())
            .env("SERVICE_ACCOUNT", service_account)
            .env(
                "PALISADE_CA_ADDRESS",
                format!("{}:{GRPC_PORT}", lab::HUB_IP),
            )
            .env("PALISADE_TRUST_DOMAIN", "cluster.local");
        self.lab.spawn(&proxy_name(name), proxy)?;
        Ok(pod)
    }

    /// Waits until the pod's proxy answers `/healthz` with 200 (it holds a certificate and its
    /// first policy).
    pub fn wait_healthy(&self, pod: &Pod, timeout: Duration) -> anyhow::Result<()> {
        let name = proxy_name(pod.netns.rsplit('-').next().unwrap_or(&pod.netns));
        self.wait_until(&name, timeout, || {
            get(pod, ADMIN_PORT, "/healthz").is_ok_and(|(status, _)| status == 200)
        })
    }

    /// Polls `ready` every 200 ms until it holds; fails with process `name`'s log tail after
    /// `timeout`, or as soon as that process exits.
    pub fn wait_until(
        &self,
        name: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self.lab.exited(name) {
                bail!(
                    "{name} exited ({status}):\n{}",
                    self.lab.log_tail(name, 3000)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} was not ready after {} s:\n{}",
                    timeout.as_secs(),
                    self.lab.log_tail(name, 3000)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The supervised process name of pod `name`'s proxy.
pub fn proxy_name(pod: &str) -> String {
    format!("proxy-{pod}")
}

/// GET `path` on 127.0.0.1:`port` inside `pod`: status and body.
pub fn get(pod: &Pod, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let path = path.to_string();
    pod.enter(move || app::admin_get(port, &path))?
}

/// The SPIFFE ID and serial the pod's proxy serves with (its `/certs`).
pub fn certificate(pod: &Pod) -> anyhow::Result<(String, String)> {
    let (_, body) = get(pod, ADMIN_PORT, "/certs")?;
    let certs: serde_json::Value = serde_json::from_str(&body).context("/certs is not JSON")?;
    let leaf = &certs["certificate"];
    let field = |name: &str| {
        leaf[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("/certs has no certificate.{name}: {body}"))
    };
    Ok((field("spiffe_id")?, field("serial")?))
}

/// The sum of a counter's samples in the pod proxy's `/metrics` whose labels include every
/// `key="value"` in `labels`.
pub fn counter(pod: &Pod, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<u64> {
    let (_, metrics) = get(pod, ADMIN_PORT, "/metrics")?;
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    Ok(metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && wanted.iter().all(|w| l.contains(w.as_str()))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}
