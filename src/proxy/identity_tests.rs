use std::collections::VecDeque;

use tokio::time::Instant;

use super::*;

/// A self-signed workload certificate for `spiffe_id`, valid `lifetime` from now (its
/// `not_before` backdated two minutes, as the CA does), built through [`build`].
pub(crate) fn identity(spiffe_id: &str, lifetime: Duration) -> Identity {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(spiffe_id).unwrap(),
    )];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(120)).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
    let cert = params.self_signed(&key).unwrap();
    build(&WorkloadCertificate {
        key_pem: key.serialize_pem(),
        chain_pem: vec![cert.pem()],
        spiffe_id: spiffe_id.into(),
    })
    .unwrap()
}

const ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

#[test]
fn build_reads_serial_validity_and_keeps_the_chain() {
    let id = identity(ID, Duration::from_secs(3600));
    assert_eq!(id.spiffe_id, ID);
    assert_eq!(id.serial, "0abc");
    assert_eq!(id.certified.cert.len(), 1);
    let lifetime = id.not_after.duration_since(id.not_before).unwrap();
    assert!((3719..=3721).contains(&lifetime.as_secs()), "{lifetime:?}");
    let left = seconds_to_expiry(&id, SystemTime::now());
    assert!((3598..=3600).contains(&left), "{left}");
    assert!(seconds_to_expiry(&id, id.not_after + Duration::from_secs(10)) <= -10);
}

#[test]
fn build_refuses_what_is_not_a_key_and_chain() {
    let good = identity(ID, Duration::from_secs(60));
    let mut bad = WorkloadCertificate {
        key_pem: "nope".into(),
        chain_pem: good.chain_pem.clone(),
        spiffe_id: ID.into(),
    };
    assert!(matches!(build(&bad), Err(IdentityError::Unusable(_))));
    bad.key_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    bad.chain_pem = vec![];
    assert!(matches!(build(&bad), Err(IdentityError::Unusable(_))));
}

#[test]
fn renewal_lands_between_40_and_50_percent_of_the_usable_lifetime() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let s = Duration::from_secs;
    for (not_before, not_after, jitter, expected) in [
        // 24 h, backdated 2 min: counted from now.
        (now - s(120), now + s(86_400), 0.0, s(34_560)),
        (now - s(120), now + s(86_400), 1.0, s(43_200)),
        (now - s(120), now + s(86_400), 0.5, s(38_880)),
        // 60 s certificates (the rotation test's).
        (now - s(120), now + s(60), 0.0, s(24)),
        (now - s(120), now + s(60), 1.0, s(30)),
        // Jitter out of range is clamped.
        (now, now + s(100), 7.0, s(50)),
        (now, now + s(100), -1.0, s(40)),
        // Not yet valid: wait for the start, then the fraction.
        (now + s(10), now + s(110), 0.0, s(50)),
        // Already expired or about to: never a busy loop.
        (now - s(200), now - s(100), 0.5, MIN_RENEWAL_DELAY),
        (now, now + s(1), 0.0, MIN_RENEWAL_DELAY),
    ] {
        assert_eq!(
            renewal_delay(now, not_before, not_after, jitter),
            expected,
            "{not_before:?} {not_after:?} {jitter}"
        );
    }
}

#[test]
fn backoff_doubles_from_one_second_up_to_a_minute() {
    let got: Vec<u64> = (1..=9).map(|n| failure_backoff(n).as_secs()).collect();
    assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(failure_backoff(0), FIRST_BACKOFF);
    assert_eq!(failure_backoff(u32::MAX), MAX_BACKOFF);
}

#[test]
fn random_fractions_are_in_range_and_vary() {
    let xs: Vec<f64> = (0..64).map(|_| random_fraction()).collect();
    assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    assert!(xs.iter().any(|x| (x - xs[0]).abs() > f64::EPSILON));
}

/// Hands out scripted outcomes and records when each attempt happened.
struct Scripted {
    outcomes: VecDeque<Option<Duration>>,
    attempts: tokio::sync::mpsc::UnboundedSender<Instant>,
}

impl Issuer for Scripted {
    async fn issue(&mut self) -> Result<Identity, IdentityError> {
        let _ = self.attempts.send(Instant::now());
        match self.outcomes.pop_front().flatten() {
            Some(lifetime) => Ok(identity(ID, lifetime)),
            None => Err(IdentityError::Token {
                path: "/token".into(),
                message: "scripted failure".into(),
            }),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn renews_on_schedule_backs_off_on_failure_and_keeps_the_current_certificate() {
    let s = Duration::from_secs;
    let (attempts_tx, mut attempts) = tokio::sync::mpsc::unbounded_channel();
    // Success (100 s), three failures, success, then failures forever.
    let outcomes: VecDeque<_> = [Some(s(100)), None, None, None, Some(s(1000))]
        .into_iter()
        .collect();
    let (tx, mut rx) = watch::channel(None);
    let metrics = ProxyMetrics::default();
    let start = Instant::now();
    tokio::spawn(run(
        Scripted {
            outcomes,
            attempts: attempts_tx,
        },
        tx,
        metrics.clone(),
        || 0.0,
    ));

    let mut at = Vec::new();
    for _ in 0..6 {
        at.push(attempts.recv().await.unwrap() - start);
        if at.len() == 1 {
            rx.changed().await.unwrap();
            let first = rx.borrow_and_update().clone().unwrap();
            assert_eq!(first.spiffe_id, ID);
        }
        if at.len() == 3 {
            // Two failures in: the first certificate is still what is published.
            assert!(!rx.has_changed().unwrap());
            assert!(rx.borrow().is_some());
        }
    }
    let secs: Vec<f64> = at.iter().map(|d| d.as_secs_f64()).collect();
    // 40 % of ~100 s after the first, then 1 s, 2 s, 4 s, then 40 % of ~1000 s.
    let expected = [0.0, 40.0, 41.0, 43.0, 47.0, 447.0];
    for (got, want) in secs.iter().zip(expected) {
        // X.509 validity has whole seconds: up to 1 s of lifetime is lost to truncation.
        assert!(
            *got <= want && want - got < 1.0,
            "attempts at {secs:?}, expected {expected:?}"
        );
    }
    assert_eq!(metrics.renewals.get(), 2);
    assert_eq!(metrics.renewal_failures.get(), 4);
    assert!(metrics.certificate_expiry_seconds.get() > 990);
    // The second certificate replaced the first.
    assert!(rx.has_changed().unwrap());
}
