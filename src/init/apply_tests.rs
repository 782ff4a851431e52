//! [`run`] against real child processes (`sh -c`) that misbehave the ways iptables front-ends
//! can: fail with a message, exit without reading their input, print before reading.

use std::sync::mpsc;
use std::time::Duration;

use super::*;

/// A script larger than any pipe buffer: writing it blocks until the child reads or exits.
fn big_script() -> String {
    "# padding line that iptables-restore would skip as a comment\n".repeat(20_000)
}

/// Runs `sh -c script` with `stdin` on another thread; a hang (the old deadlock) fails the
/// test after a generous deadline instead of blocking the suite.
fn sh(script: &str, stdin: Option<String>) -> Result<String, ApplyError> {
    let (tx, rx) = mpsc::channel();
    let script = script.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(run("sh", &["-c", &script], stdin.as_deref()));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("run() returned (no deadlock between stdin and stdout)")
}

#[test]
fn a_failing_tool_is_reported_with_its_own_message() {
    let e = sh(
        "cat >/dev/null; echo 'iptables-restore: line 7 failed' >&2; exit 1",
        Some(big_script()),
    )
    .expect_err("exit 1 is a failure");
    let text = e.to_string();
    assert!(matches!(e, ApplyError::Failed { .. }), "{e:?}");
    assert!(
        text.contains("iptables-restore: line 7 failed") && text.contains("exit status: 1"),
        "{text}"
    );
    assert!(!text.contains("installed"), "{text}");
}

#[test]
fn a_tool_that_fails_before_reading_its_input_is_reported_and_reaped() {
    // `$$` is the child's pid: once run() returns, it must not linger as a zombie.
    let e = sh(
        "echo \"pid $$\" >&2; echo 'cannot initialize table nat' >&2; exit 2",
        Some(big_script()),
    )
    .expect_err("exit 2 is a failure");
    let ApplyError::Failed { stderr, status, .. } = &e else {
        panic!("expected the tool's own failure, got {e:?}");
    };
    assert!(stderr.contains("cannot initialize table nat"), "{e}");
    assert!(status.contains('2'), "{e}");
    let pid = stderr
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .expect("child printed its pid");
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let state = proc_status
        .lines()
        .find(|l| l.starts_with("State:"))
        .unwrap_or("State: gone");
    assert!(!state.contains("zombie"), "child {pid} not reaped: {state}");
}

#[test]
fn a_tool_that_exits_zero_without_reading_its_input_is_not_a_success() {
    let e = sh("exit 0", Some(big_script())).expect_err("nothing says the script was applied");
    assert!(matches!(e, ApplyError::Unread { .. }), "{e:?}");
    assert!(
        e.to_string().contains("before reading the whole script"),
        "{e}"
    );
}

#[test]
fn output_before_input_does_not_deadlock() {
    // Fills the stdout pipe before reading stdin: writing stdin first would wait forever.
    let out = sh(
        "head -c 300000 /dev/zero | tr '\\0' x; cat >/dev/null; echo done >&2",
        Some(big_script()),
    )
    .expect("succeeds");
    assert_eq!(out.len(), 300_000);
    assert!(out.bytes().all(|b| b == b'x'));
}

#[test]
fn stdout_without_stdin_and_a_missing_tool() {
    assert_eq!(
        sh("printf '*nat\\nCOMMIT\\n'", None).unwrap(),
        "*nat\nCOMMIT\n"
    );
    let e = run(
        "/nonexistent/palisade-test/iptables-save",
        &["-t", "nat"],
        None,
    )
    .expect_err("no such program");
    assert!(matches!(e, ApplyError::Spawn { .. }), "{e:?}");
    assert!(e.to_string().contains("installed"), "{e}");
}

#[test]
fn output_is_capped_and_drained() {
    let (kept, complete) = read_capped(Some(&b"abcdef"[..]), 4).unwrap();
    assert_eq!((kept.as_slice(), complete), (&b"abcd"[..], false));
    let (kept, complete) = read_capped(Some(&b"abcdef"[..]), 6).unwrap();
    assert_eq!((kept.as_slice(), complete), (&b"abcdef"[..], true));
    let (kept, complete) = read_capped(None::<&[u8]>, 6).unwrap();
    assert!(kept.is_empty() && complete);
}

#[test]
fn a_front_end_that_starts_but_cannot_restore_is_unusable() {
    // `ls` stands in for an ip6tables-restore that starts (`--version` works, which is all the
    // old probe asked) but cannot do the job: the real `--test` run fails, with its message.
    let broken = Iptables {
        family: Family::V6,
        save: "true".into(),
        restore: "ls".into(),
    };
    let e = broken.available().expect_err("restore --test fails");
    assert!(matches!(e, ApplyError::Failed { .. }), "{e:?}");
    assert!(e.to_string().contains("ls --noflush --test"), "{e}");
    // Both steps working is usable. The stand-in restore reads its whole input and succeeds,
    // as a real one does (`true` would not do: a tool that exits 0 without reading its input
    // is refused, and whether `true` beats our write to the pipe is a race).
    let dir = tempfile::tempdir().unwrap();
    let restore = dir.path().join("restore");
    std::fs::write(&restore, "#!/bin/sh\ncat >/dev/null\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&restore, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fine = Iptables {
        family: Family::V6,
        save: "true".into(),
        restore: restore.display().to_string(),
    };
    fine.available().expect("usable");
}
