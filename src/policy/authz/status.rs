//! Status conditions of an AuthorizationPolicy, as a pure function for the status writer.

use crate::api::{AuthorizationAction, PolicyCondition, PolicyStatus};
use crate::policy::model::{DiagnosticKind, ObjectRef, Severity, Workload};

use super::{AuthzEngine, CompiledPolicy};

/// Longest condition message written (Kubernetes allows 32768; keep status objects small).
const MAX_MESSAGE: usize = 4096;

fn condition(type_: &str, status: bool, reason: &str, message: String) -> PolicyCondition {
    let mut message = message;
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" ...");
    }
    PolicyCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: None,
        observed_generation: None,
    }
}

/// The status of one compiled policy.
///
/// - `Accepted`: `False`/`UnsupportedAction` for CUSTOM (it denies what it applies to),
///   `False`/`InvalidFields` when a value does not parse (that part fails closed), else
///   `True`/`Accepted` (the message notes an ALLOW policy that allows nothing or a rule that
///   matches everything).
/// - `NotEnforced`: `True`/`HttpOnlyFields` (HTTP-only fields, AUDIT, targetRef) with what each
///   does at L4, else `False`/`Enforced`.
/// - `Unused`: only when `applies_to` (the number of workloads of a complete inventory it
///   applies to) is known: `True`/`SelectsNothing` at 0, else `False`/`InUse`.
///
/// `lastTransitionTime` is left empty for the writer, which knows the previous conditions;
/// `observedGeneration` is `generation` on the status and on every condition.
pub fn authz_status(
    policy: &CompiledPolicy,
    applies_to: Option<usize>,
    generation: Option<i64>,
) -> PolicyStatus {
    let messages = |pred: &dyn Fn(&DiagnosticKind, Severity) -> bool| -> Vec<&str> {
        policy
            .diagnostics
            .iter()
            .filter(|d| pred(&d.kind, d.severity))
            .map(|d| d.message.as_str())
            .collect()
    };
    let invalid = messages(&|k, _| matches!(k, DiagnosticKind::Invalid { .. }));
    let notes = messages(&|k, _| {
        matches!(
            k,
            DiagnosticKind::AllowsNothing | DiagnosticKind::MatchesEverything { .. }
        )
    });
    let accepted = if policy.action == AuthorizationAction::Custom {
        condition(
            "Accepted",
            false,
            "UnsupportedAction",
            "action CUSTOM is not supported: every connection to the workloads this policy applies to is denied".into(),
        )
    } else if !invalid.is_empty() {
        condition("Accepted", false, "InvalidFields", invalid.join("; "))
    } else if notes.is_empty() {
        condition(
            "Accepted",
            true,
            "Accepted",
            "the policy is enforced".into(),
        )
    } else {
        condition("Accepted", true, "Accepted", notes.join("; "))
    };
    let not_enforced = messages(&|k, _| matches!(k, DiagnosticKind::NotEnforced { .. }));
    let not_enforced = if not_enforced.is_empty() {
        condition(
            "NotEnforced",
            false,
            "Enforced",
            "every field is enforced at L4".into(),
        )
    } else {
        condition(
            "NotEnforced",
            true,
            "HttpOnlyFields",
            not_enforced.join("; "),
        )
    };
    let mut conditions = vec![accepted, not_enforced];
    if let Some(n) = applies_to {
        conditions.push(if n == 0 {
            condition(
                "Unused",
                true,
                "SelectsNothing",
                "the policy applies to no workload".into(),
            )
        } else {
            condition(
                "Unused",
                false,
                "InUse",
                format!("the policy applies to {n} workload(s)"),
            )
        });
    }
    for c in &mut conditions {
        c.observed_generation = generation;
    }
    PolicyStatus {
        conditions,
        observed_generation: generation,
    }
}

/// The status of every policy of `engine`. With `workloads` (the complete inventory), the
/// `Unused` condition is set too; `observedGeneration` is left for the writer.
pub fn authz_statuses(
    engine: &AuthzEngine,
    workloads: Option<&[Workload]>,
) -> Vec<(ObjectRef, PolicyStatus)> {
    let counts = workloads.map(|ws| engine.workload_counts(ws));
    engine
        .policies()
        .enumerate()
        .map(|(i, p)| {
            let applies_to = counts.as_ref().and_then(|c| c.get(i).copied());
            (p.object.clone(), authz_status(p, applies_to, None))
        })
        .collect()
}
