//! `palisade init` for real: two network namespaces joined by a veth pair (a "pod" at
//! 10.77.0.1 / fd00:50::1 and a "peer" at 10.77.0.2 / fd00:50::2), the rules applied by the
//! real binary inside the pod namespace, and real TCP connections over both IPv4 and IPv6
//! checked against where they arrive and with which original destination (SO_ORIGINAL_DST,
//! IP6T_SO_ORIGINAL_DST).
//!
//! Needs root, iptables and ip6tables. Without them the test fails with a message saying what is
//! missing. With `PALISADE_SKIP_NETNS=1` it does not run and reports itself skipped
//! (`SKIPPED: <name>: <why>`, counted as skipped by `make test`, never as passed).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

use crate::support;

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const POD_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
const PEER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 2);
const DEADLINE: Duration = Duration::from_secs(5);

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    if euid != "0" {
        return Some(format!("not root (euid {euid}); run the tests as root"));
    }
    for (tool, arg) in [
        ("iptables-restore", "--version"),
        ("iptables-save", "--version"),
        ("ip6tables-restore", "--version"),
        ("ip6tables-save", "--version"),
        ("ip", "-V"),
        ("setpriv", "--version"),
    ] {
        if !Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!(
                "{tool} is not installed (Debian: apt-get install -y iptables iproute2 util-linux, or `make tools`)"
            ));
        }
    }
    None
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_output(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces and a veth pair; deleted on drop (which also removes the veth).
struct Topology {
    pod: String,
    peer: String,
}

impl Topology {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let t = Self {
            pod: format!("pal-pod-{id}"),
            peer: format!("pal-peer-{id}"),
        };
        t.delete();
        let (a, b) = (format!("pva{id}"), format!("pvb{id}"));
        run(&["ip", "netns", "add", &t.pod]);
        run(&["ip", "netns", "add", &t.peer]);
        run(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        run(&["ip", "link", "set", &a, "netns", &t.pod]);
        run(&["ip", "link", "set", &b, "netns", &t.peer]);
        for (ns, dev, ip, ip6) in [
            (&t.pod, &a, POD_IP, POD_IP6),
            (&t.peer, &b, PEER_IP, PEER_IP6),
        ] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            // `nodad`: usable at once, no duplicate-address detection to wait for.
            run(&[
                "ip",
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{ip6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        t
    }

    fn delete(&self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }

    /// Runs `palisade init ARGS` inside the pod namespace.
    fn init(&self, args: &[&str]) -> String {
        let bin = support::palisade_bin();
        let mut cmd = vec![
            "ip",
            "netns",
            "exec",
            &self.pod,
            bin.to_str().unwrap(),
            "init",
        ];
        cmd.extend(args);
        run_output(&cmd)
    }

    /// The pod's IPv4 nat table without comments and counters.
    fn nat(&self) -> String {
        self.nat_of("iptables-save")
    }

    /// The pod's IPv6 nat table without comments and counters.
    fn nat6(&self) -> String {
        self.nat_of("ip6tables-save")
    }

    fn nat_of(&self, save: &str) -> String {
        run_output(&["ip", "netns", "exec", &self.pod, save, "-t", "nat"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Runs `f` on a thread that has entered namespace `ns`; sockets it creates live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("netns file");
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

fn listen(ns: &str, port: u16) -> TcpListener {
    let l = in_netns(ns, move || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).expect("bind in netns")
    });
    l.set_nonblocking(true).unwrap();
    l
}

/// An IPv6-only listener on `[::]:port` (so it can share the port with the IPv4 one).
fn listen6(ns: &str, port: u16) -> TcpListener {
    let l = in_netns(ns, move || {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
            .expect("IPv6 socket");
        s.set_only_v6(true).expect("IPV6_V6ONLY");
        s.set_reuse_address(true).expect("SO_REUSEADDR");
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())
            .expect("bind [::] in netns");
        s.listen(16).expect("listen");
        TcpListener::from(s)
    });
    l.set_nonblocking(true).unwrap();
    l
}

fn connect(ns: &str, to: impl Into<SocketAddr>) -> TcpStream {
    let to = to.into();
    in_netns(ns, move || {
        TcpStream::connect_timeout(&to, DEADLINE).expect("connect")
    })
}

/// Waits (polling, with a deadline) for a connection on `l`.
fn accept(l: &TcpListener) -> Option<TcpStream> {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        match l.accept() {
            Ok((s, _)) => return Some(s),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    None
}

fn nothing_waiting(l: &TcpListener) -> bool {
    matches!(l.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

fn original_dst(s: &TcpStream) -> SocketAddrV4 {
    let addr = socket2::SockRef::from(s)
        .original_dst_v4()
        .expect("SO_ORIGINAL_DST");
    *addr.as_socket_ipv4().as_ref().expect("an IPv4 address")
}

fn original_dst6(s: &TcpStream) -> SocketAddrV6 {
    let addr = socket2::SockRef::from(s)
        .original_dst_v6()
        .expect("IP6T_SO_ORIGINAL_DST");
    *addr.as_socket_ipv6().as_ref().expect("an IPv6 address")
}

/// Runs `bash -c script` in the pod namespace as the proxy's uid and gid.
fn as_proxy(t: &Topology, script: &str) {
    run(&[
        "ip",
        "netns",
        "exec",
        &t.pod,
        "setpriv",
        "--reuid=1337",
        "--regid=1337",
        "--clear-groups",
        "bash",
        "-c",
        script,
    ]);
}

#[test]
fn init_rules_redirect_in_a_network_namespace() {
    const NAME: &str = "init_rules_redirect_in_a_network_namespace";
    if std::env::var("PALISADE_SKIP_NETNS").as_deref() == Ok("1") {
        let why = match missing_prerequisite() {
            Some(why) => format!("PALISADE_SKIP_NETNS=1 ({why})"),
            None => "PALISADE_SKIP_NETNS=1".to_string(),
        };
        support::skipped(NAME, &why);
        return;
    }
    if let Some(why) = missing_prerequisite() {
        panic!(
            "cannot test palisade init in a network namespace: {why}. \
             Set PALISADE_SKIP_NETNS=1 to skip this test explicitly."
        );
    }
    let t = Topology::new();
    let before = t.nat();
    let before6 = t.nat6();
    // `--ipv6 on`: fail rather than silently skip IPv6 if the namespace cannot take it.
    t.init(&["--ipv6", "on", "--exclude-inbound-ports", "9091"]);
    let applied = t.nat();
    let applied6 = t.nat6();
    assert!(applied.contains("-A PALISADE_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
    assert!(applied6.contains("-A PALISADE_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
    assert!(
        applied6.contains("-A PALISADE_OUTPUT -d ::1/128 -j RETURN"),
        "{applied6}"
    );
    assert!(applied6.contains("--dport 9091 -j RETURN"), "{applied6}");
    // Idempotent: a second run (a restarted init container) leaves the same tables.
    t.init(&["--ipv6", "on", "--exclude-inbound-ports", "9091"]);
    assert_eq!(t.nat(), applied);
    assert_eq!(t.nat6(), applied6);
    // Re-running with other settings replaces the rules rather than adding to them.
    t.init(&["--exclude-inbound-ports", "9092"]);
    let changed = t.nat();
    assert!(changed.contains("--dport 9092 -j RETURN") && !changed.contains("--dport 9091"));
    assert_eq!(
        changed.matches("-j PALISADE_INBOUND").count(),
        1,
        "{changed}"
    );
    t.init(&["--exclude-inbound-ports", "9091"]);
    assert_eq!(t.nat(), applied);
    assert_eq!(
        t.nat6(),
        applied6,
        "--ipv6 auto writes the same IPv6 rules here"
    );

    let outbound = listen(&t.pod, 15001);
    let inbound = listen(&t.pod, 15006);
    let app = listen(&t.pod, 8080);
    let excluded = listen(&t.pod, 9091);
    let peer = listen(&t.peer, 9090);
    let outbound6 = listen6(&t.pod, 15001);
    let inbound6 = listen6(&t.pod, 15006);
    let app6 = listen6(&t.pod, 8080);
    let peer6 = listen6(&t.peer, 9090);

    // The app dials a peer: the connection lands on the proxy's outbound port and the
    // original destination is the peer's address.
    let _app_client = connect(&t.pod, SocketAddrV4::new(PEER_IP, 9090));
    let got = accept(&outbound).expect("outbound connection redirected to 15001");
    assert_eq!(original_dst(&got), SocketAddrV4::new(PEER_IP, 9090));
    assert!(
        nothing_waiting(&peer),
        "app traffic reached the peer directly"
    );

    // The proxy (uid 1337) dials the same peer: not redirected.
    as_proxy(
        &t,
        &format!("exec 3<>/dev/tcp/{PEER_IP}/9090 && echo from-proxy >&3"),
    );
    let mut direct = accept(&peer).expect("uid 1337 connection reached the peer directly");
    direct.set_nonblocking(false).unwrap();
    let mut text = String::new();
    direct.read_to_string(&mut text).unwrap();
    assert_eq!(text, "from-proxy\n");
    assert!(
        nothing_waiting(&outbound),
        "uid 1337 traffic was redirected"
    );

    // A peer dials the app: the connection lands on the proxy's inbound port.
    let mut peer_client = connect(&t.peer, SocketAddrV4::new(POD_IP, 8080));
    let got = accept(&inbound).expect("inbound connection redirected to 15006");
    assert_eq!(original_dst(&got), SocketAddrV4::new(POD_IP, 8080));
    assert!(
        nothing_waiting(&app),
        "inbound traffic reached the app directly"
    );
    peer_client.write_all(b"x").unwrap();

    // An excluded inbound port is not captured.
    let _c = connect(&t.peer, SocketAddrV4::new(POD_IP, 9091));
    assert!(accept(&excluded).is_some(), "excluded port was captured");
    assert!(nothing_waiting(&inbound));

    // IPv6: the app dials the peer, the connection lands on the proxy's outbound port with
    // the peer's IPv6 address as the original destination.
    let _app_client6 = connect(&t.pod, SocketAddrV6::new(PEER_IP6, 9090, 0, 0));
    let got = accept(&outbound6).expect("outbound IPv6 connection redirected to 15001");
    assert_eq!(original_dst6(&got), SocketAddrV6::new(PEER_IP6, 9090, 0, 0));
    assert!(
        nothing_waiting(&peer6),
        "app IPv6 traffic reached the peer directly"
    );
    assert!(nothing_waiting(&outbound), "IPv6 traffic arrived as IPv4");

    // IPv6: the proxy (uid 1337) dials the peer: not redirected.
    as_proxy(
        &t,
        &format!("exec 3<>/dev/tcp/{PEER_IP6}/9090 && echo from-proxy-v6 >&3"),
    );
    let mut direct = accept(&peer6).expect("uid 1337 IPv6 connection reached the peer directly");
    direct.set_nonblocking(false).unwrap();
    let mut text = String::new();
    direct.read_to_string(&mut text).unwrap();
    assert_eq!(text, "from-proxy-v6\n");
    assert!(
        nothing_waiting(&outbound6),
        "uid 1337 IPv6 traffic was redirected"
    );

    // IPv6: a peer dials the app: the connection lands on the proxy's inbound port.
    let _peer_client6 = connect(&t.peer, SocketAddrV6::new(POD_IP6, 8080, 0, 0));
    let got = accept(&inbound6).expect("inbound IPv6 connection redirected to 15006");
    assert_eq!(original_dst6(&got), SocketAddrV6::new(POD_IP6, 8080, 0, 0));
    assert!(
        nothing_waiting(&app6),
        "inbound IPv6 traffic reached the app directly"
    );

    // Clean-up restores both tables and direct delivery.
    t.init(&["--cleanup"]);
    assert_eq!(t.nat(), before);
    assert!(!t.nat().contains("PALISADE"));
    assert_eq!(t.nat6(), before6);
    assert!(!t.nat6().contains("PALISADE"));
    let _c = connect(&t.peer, SocketAddrV6::new(POD_IP6, 8080, 0, 0));
    assert!(
        accept(&app6).is_some(),
        "after clean-up the app is reached directly over IPv6"
    );
    let _c = connect(&t.peer, SocketAddrV4::new(POD_IP, 8080));
    assert!(
        accept(&app).is_some(),
        "after clean-up the app is reached directly"
    );
    // Clean-up twice is fine too.
    t.init(&["--cleanup"]);

    // Fake ip6tables-restore front-ends, real iptables for the rest. `probe_fails` starts
    // (`--version` works) but cannot restore, as an image whose kernel lacks ip6table_nat;
    // `apply_fails` passes the `--test` probe and fails the real restore.
    let dir = std::env::temp_dir().join(format!("palisade-fail6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = |name: &str, test_exit: u8| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\ncat >/dev/null\n\
                 case \"$*\" in *--test*) [ {test_exit} = 0 ] && exit 0;; esac\n\
                 echo 'simulated ip6tables-restore failure' >&2\nexit 1\n"
            ),
        )
        .unwrap();
        run(&["chmod", "755", path.to_str().unwrap()]);
        path
    };
    let probe_fails = fake("probe-fails", 1);
    let apply_fails = fake("apply-fails", 0);
    let init_with = |restore6: &std::path::Path| {
        Command::new("ip")
            .args(["netns", "exec", &t.pod])
            .arg(support::palisade_bin())
            .args([
                "init",
                "--exclude-inbound-ports",
                "9091",
                "--ip6tables-restore",
            ])
            .arg(restore6)
            .output()
            .unwrap()
    };

    // `--ipv6 auto` with IPv6 on and an ip6tables that cannot restore: refused before anything
    // changes, with the tool's message and the ways out.
    let out = init_with(&probe_fails);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("simulated ip6tables-restore failure")
            && stderr.contains("IPv6 traffic would bypass the proxy")
            && stderr.contains("--ipv6 off"),
        "{stderr}"
    );
    assert_eq!(t.nat(), before, "nothing installed when IPv6 cannot be");
    assert_eq!(t.nat6(), before6);

    // The IPv6 step fails after the IPv4 one succeeded: the error says which half is in
    // place, and a retry converges to the full rule set.
    let out = init_with(&apply_fails);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("IPv4 rules are installed but installing the IPv6 rules failed")
            && stderr.contains("simulated ip6tables-restore failure"),
        "{stderr}"
    );
    assert_eq!(t.nat(), applied);
    assert_eq!(t.nat6(), before6);
    t.init(&["--exclude-inbound-ports", "9091"]);
    assert_eq!(t.nat(), applied);
    assert_eq!(t.nat6(), applied6);
    t.init(&["--cleanup"]);
    assert_eq!(t.nat(), before);
    assert_eq!(t.nat6(), before6);

    // `--ipv6 off` writes the IPv4 rules only.
    t.init(&["--ipv6", "off"]);
    assert!(t.nat().contains("PALISADE_OUTPUT"));
    assert_eq!(t.nat6(), before6);
    t.init(&["--cleanup"]);
    assert_eq!(t.nat(), before);
}

#[test]
fn init_dry_run_prints_the_script_without_root() {
    let (ok, stdout, stderr) = support::palisade(&[
        "init",
        "--dry-run",
        "--exclude-outbound-ip-ranges",
        "169.254.169.254,fd00:ec2::254",
    ]);
    assert!(ok, "{stderr}");
    // One script per family, each under a comment header that iptables-restore skips.
    let (v4, v6) = stdout
        .split_once("# ip6tables-restore\n")
        .unwrap_or_else(|| panic!("no IPv6 script: {stdout}"));
    assert!(
        v4.starts_with("# iptables-restore\n*nat\n:PALISADE_INBOUND - [0:0]\n"),
        "{stdout}"
    );
    assert!(v4.contains("-A PALISADE_OUTPUT -d 169.254.169.254/32 -j RETURN\n"));
    assert!(v4.contains("-A PALISADE_OUTPUT -d 127.0.0.0/8 -j RETURN\n"));
    assert!(v4.ends_with("COMMIT\n") && !v4.contains("fd00"));
    assert!(
        v6.starts_with("*nat\n:PALISADE_INBOUND - [0:0]\n"),
        "{stdout}"
    );
    assert!(v6.contains("-A PALISADE_OUTPUT -d fd00:ec2::254/128 -j RETURN\n"));
    assert!(v6.contains("-A PALISADE_OUTPUT -d ::1/128 -j RETURN\n"));
    assert!(v6.ends_with("COMMIT\n") && !v6.contains("169.254"));
    // --ipv6 off prints the IPv4 script alone.
    let (ok, stdout, stderr) = support::palisade(&["init", "--dry-run", "--ipv6", "off"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("# iptables-restore\n") && !stdout.contains("ip6tables"));
    let (ok, _, stderr) = support::palisade(&[
        "init",
        "--dry-run",
        "--include-outbound-ip-ranges",
        "fd00::/129",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--include-outbound-ip-ranges") && stderr.contains("fd00::/129"),
        "{stderr}"
    );
    let (ok, _, stderr) =
        support::palisade(&["init", "--dry-run", "--exclude-inbound-ports", "ssh"]);
    assert!(!ok);
    assert!(stderr.contains("--exclude-inbound-ports"), "{stderr}");
}

/// `--ipv6 auto` (what the injector passes) in a namespace with IPv6 and without a usable
/// ip6tables stops the pod, before any rule is written: IPv4-only capture would let IPv6
/// traffic bypass the proxy. `true` stands in for the IPv4 front-ends, so even a regression
/// that went on to "apply" would change nothing on this machine. (`--ipv6 off` is covered by
/// the decision table in `cli::init` and by the network-namespace test above.)
#[test]
fn init_auto_refuses_ipv6_without_ip6tables() {
    const NAME: &str = "init_auto_refuses_ipv6_without_ip6tables";
    let ipv6_here = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .is_ok_and(|v| v.trim() == "0");
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0");
    // Here when this namespace has IPv6; otherwise in a fresh one (IPv6 on by default), as root.
    let mut cmd = if ipv6_here {
        Command::new(support::palisade_bin())
    } else if root && Command::new("unshare").arg("--version").output().is_ok() {
        let mut c = Command::new("unshare");
        c.arg("--net").arg(support::palisade_bin());
        c
    } else {
        support::skipped(
            NAME,
            "IPv6 is disabled in this network namespace and making a new one needs root and unshare",
        );
        return;
    };
    let missing = "/nonexistent/palisade-test/ip6tables-restore";
    let out = cmd
        .args(["init", "--ipv6", "auto"])
        .args(["--iptables-save", "true", "--iptables-restore", "true"])
        .args(["--ip6tables-save", missing, "--ip6tables-restore", missing])
        .output()
        .expect("palisade runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "auto must fail closed: {stderr}");
    for needed in [missing, "IPv6 traffic would bypass the proxy", "--ipv6 off"] {
        assert!(stderr.contains(needed), "{needed:?} not in: {stderr}");
    }
    assert!(
        !stderr.contains("traffic capture installed"),
        "nothing may be installed first: {stderr}"
    );
}
