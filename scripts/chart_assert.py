#!/usr/bin/env python3
"""Assertions on the objects `helm template` renders from charts/palisade (run by
scripts/chart-check.sh). Each case names the values it was rendered with and what they must
produce; the invariants (least-privilege RBAC, restricted pods, fail-closed webhook wiring)
hold for every case.

Usage: chart_assert.py CASE NAMESPACE RENDERED.yaml
"""

import sys

import yaml

# What each rendering must show. "default" is values.yaml as shipped; "custom" is
# charts/palisade/ci/custom-values.yaml, which changes every setting.
CASES = {
    "default": {
        "replicas": 2,
        "image": "ghcr.io/palisade-dev/palisade:0.1.0",
        "pull_policy": "IfNotPresent",
        "proxy_image": "ghcr.io/palisade-dev/palisade:0.1.0",
        "proxy_pull_policy": None,
        "ca_address": "palisade.{ns}.svc:15012",
        "trust_domain": "cluster.local",
        "failure_policy": "Fail",
        "timeout": 5,
        "ttl": ("24h", "90d"),
        "listen": "0.0.0.0",
        "mesh_pa": None,
        "pdb_max_unavailable": 1,
        "spread": "ScheduleAnyway",
        "pull_secrets": [],
    },
    "custom": {
        "replicas": 3,
        "image": "registry.example.test/mesh/palisade:1.2.3@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "pull_policy": "Always",
        "proxy_image": "registry.example.test/mesh/palisade-proxy:1.2.3",
        "proxy_pull_policy": "IfNotPresent",
        "ca_address": "palisade.{ns}.svc.cluster.local:15012",
        "trust_domain": "prod.example.test",
        "failure_policy": "Ignore",
        "timeout": 3,
        "ttl": ("12h", "30d"),
        "listen": "[::]",
        "mesh_pa": "PERMISSIVE",
        "pdb_max_unavailable": 2,
        "spread": "DoNotSchedule",
        "pull_secrets": ["regcred"],
    },
}

CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
# Verbs that only read. Anything else must be a create (RBAC cannot name what does not exist
# yet), a status patch, or limited by resourceNames.
READ_VERBS = {"get", "list", "watch"}
# Verbs that hand out more than the rule names: never granted.
FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "deletecollection", "delete", "*"}
# Creates the controller needs; each is justified in templates/rbac.yaml.
ALLOWED_CREATES = {
    ("ClusterRole", "authentication.k8s.io", "tokenreviews"),
    ("ClusterRole", "", "configmaps"),
    ("Role", "", "secrets"),
    ("Role", "coordination.k8s.io", "leases"),
}
MONITOR_PORT = 15014
PORTS = {"grpc": 15012, "webhook": 15017, "monitor": MONITOR_PORT}

failures = []


def check(condition, message):
    """Records a failed assertion (all are reported, not only the first)."""
    if not condition:
        failures.append(message)
    return condition


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (the API server would keep only the last)."""


def _unique_mapping(loader, node, deep=False):
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        keys.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping
)


def one(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if not check(len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"):
        return {}
    return found[0]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_namespaces(objects, ns):
    for o in objects:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in CLUSTER_SCOPED:
            check("namespace" not in o["metadata"], f"{where} is cluster-scoped but has a namespace")
        else:
            check(o["metadata"].get("namespace") == ns, f"{where} is not in namespace {ns}")


def check_rbac(objects, ns):
    for kind in ("ClusterRole", "Role"):
        role = one(objects, kind, "palisade-controller")
        for i, rule in enumerate(role.get("rules", [])):
            where = f"{kind} rule {i} ({rule.get('resources')})"
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                values = rule.get(field, [])
                check(all("*" not in v for v in values), f"{where}: wildcard in {field}")
            check("nonResourceURLs" not in rule, f"{where}: nonResourceURLs granted")
            verbs = set(rule.get("verbs", []))
            check(not verbs & FORBIDDEN_VERBS, f"{where}: grants {sorted(verbs & FORBIDDEN_VERBS)}")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    if resource in ("secrets", "leases"):
                        check(kind == "Role", f"{where}: {resource} granted cluster-wide")
                    writes = verbs - READ_VERBS
                    if "create" in writes:
                        check((kind, group, resource) in ALLOWED_CREATES,
                              f"{where}: create on {group}/{resource} is not needed")
                        check(verbs == {"create"}, f"{where}: create shares a rule with {verbs}")
                    elif writes and resource.endswith("/status"):
                        check(writes == {"patch"}, f"{where}: status writes other than patch")
                    elif writes:
                        check(bool(rule.get("resourceNames")),
                              f"{where}: {sorted(writes)} on {resource} without resourceNames")
                    if resource in ("configmaps", "secrets") and verbs & READ_VERBS:
                        check(bool(rule.get("resourceNames")),
                              f"{where}: reads every {resource}, not only Palisade's")
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(objects, kind, "palisade-controller")
        check(binding.get("roleRef") == {"apiGroup": "rbac.authorization.k8s.io",
                                         "kind": role_kind, "name": "palisade-controller"},
              f"{kind} binds {binding.get('roleRef')}")
        check(binding.get("subjects") == [{"kind": "ServiceAccount", "name": "palisade",
                                           "namespace": ns}],
              f"{kind} subjects are {binding.get('subjects')}, not the palisade ServiceAccount in {ns}")


def check_webhook(objects, ns, want):
    config = one(objects, "MutatingWebhookConfiguration", "palisade-sidecar-injector")
    hooks = config.get("webhooks", [])
    check(len(hooks) == 2, f"expected 2 webhooks, found {len(hooks)}")
    selectors = []
    for hook in hooks:
        where = f"webhook {hook.get('name')}"
        service = hook.get("clientConfig", {}).get("service", {})
        check(service == {"name": "palisade", "namespace": ns, "path": "/inject", "port": 15017},
              f"{where}: calls {service}")
        check("caBundle" not in hook.get("clientConfig", {}), f"{where}: caBundle set by the chart")
        check(hook.get("failurePolicy") == want["failure_policy"], f"{where}: failurePolicy")
        check(hook.get("timeoutSeconds") == want["timeout"], f"{where}: timeoutSeconds")
        check(hook.get("sideEffects") == "None", f"{where}: sideEffects")
        check(hook.get("admissionReviewVersions") == ["v1"], f"{where}: admissionReviewVersions")
        check(hook.get("rules") == [{"operations": ["CREATE"], "apiGroups": [""],
                                     "apiVersions": ["v1"], "resources": ["pods"],
                                     "scope": "Namespaced"}], f"{where}: rules")
        ns_exprs = {e["key"]: e for e in hook["namespaceSelector"]["matchExpressions"]}
        excluded = ns_exprs.get("kubernetes.io/metadata.name", {})
        check(excluded.get("operator") == "NotIn"
              and set(excluded.get("values", [])) == {ns, "kube-system"},
              f"{where}: does not exclude {ns} and kube-system")
        ns_inject = ns_exprs.get("palisade.dev/inject", {})
        obj = hook["objectSelector"]["matchExpressions"]
        check(len(obj) == 1 and obj[0]["key"] == "sidecar.palisade.dev/inject",
              f"{where}: objectSelector")
        selectors.append((ns_inject.get("operator"), tuple(ns_inject.get("values", [])),
                          obj[0].get("operator"), tuple(obj[0].get("values", []))))
    # Opted-in namespaces unless the pod says false; opted-in pods anywhere else. Disjoint, so
    # no pod is sent to the injector twice.
    check(sorted(selectors) == [("In", ("enabled",), "NotIn", ("false",)),
                                ("NotIn", ("enabled",), "In", ("true",))],
          f"webhook selectors are {selectors}")


def check_security_context(pod, container):
    where = f"container {container['name']}"
    pod_sc = pod.get("securityContext", {})
    sc = container.get("securityContext", {})
    check(pod_sc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True,
          f"{where}: runAsNonRoot")
    check(sc.get("runAsUser", pod_sc.get("runAsUser")) not in (None, 0), f"{where}: runs as root")
    check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation")
    check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    check(sc.get("privileged") in (None, False), f"{where}: privileged")
    caps = sc.get("capabilities", {})
    check(caps.get("drop") == ["ALL"] and not caps.get("add"), f"{where}: capabilities {caps}")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    check(seccomp.get("type") == "RuntimeDefault", f"{where}: seccompProfile")


def check_deployment(objects, ns, want):
    deploy = one(objects, "Deployment", "palisade")
    spec = deploy.get("spec", {})
    template = spec.get("template", {})
    pod = template.get("spec", {})
    labels = template.get("metadata", {}).get("labels", {})
    check(spec.get("replicas") == want["replicas"], f"replicas {spec.get('replicas')}")
    check(matches(spec["selector"]["matchLabels"], labels), "Deployment selector misses its pods")
    check(pod.get("serviceAccountName") == "palisade", "serviceAccountName")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        check(not pod.get(field), f"pod sets {field}")
    check(all("hostPath" not in v for v in pod.get("volumes", [])), "pod mounts a hostPath")
    spread = pod.get("topologySpreadConstraints", [])
    check(len(spread) == 1 and spread[0]["topologyKey"] == "kubernetes.io/hostname"
          and spread[0]["whenUnsatisfiable"] == want["spread"]
          and matches(spread[0]["labelSelector"]["matchLabels"], labels),
          f"topology spread {spread}")
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    check(bool(anti), "no pod anti-affinity")
    check([s.get("name") for s in pod.get("imagePullSecrets", [])] == want["pull_secrets"],
          "imagePullSecrets")

    containers = pod.get("containers", [])
    check(len(containers) == 1 and not pod.get("initContainers"), "one container expected")
    container = containers[0] if containers else {"name": "?"}
    check_security_context(pod, container)
    check(container.get("image") == want["image"], f"image {container.get('image')}")
    check(container.get("imagePullPolicy") == want["pull_policy"], "imagePullPolicy")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    check(ports == PORTS, f"container ports {ports}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        port = ports.get(get.get("port"), get.get("port"))
        check(get.get("path") == path and port == MONITOR_PORT,
              f"{probe} is {get}, not {path} on the monitor port")
    env = {e["name"]: e for e in container.get("env", [])}
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        field = env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        check(field == path, f"{name} is not the downward API's {path}")
    resources = container.get("resources", {})
    check(resources.get("requests", {}).keys() >= {"cpu", "memory"}, "resource requests")
    check("memory" in resources.get("limits", {}), "memory limit")
    args = container.get("args", [])
    listen = want["listen"]
    expected_args = [
        "controller",
        f"--trust-domain={want['trust_domain']}",
        "--injection-config=/etc/palisade/injection/injection.yaml",
        f"--default-ttl={want['ttl'][0]}",
        f"--max-ttl={want['ttl'][1]}",
        f"--grpc-addr={listen}:15012",
        f"--webhook-addr={listen}:15017",
        f"--monitor-addr={listen}:15014",
    ]
    check(args == expected_args, f"controller args {args}")
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    check(mounts.get("injection", {}).get("mountPath") == "/etc/palisade/injection"
          and volumes.get("injection", {}).get("configMap", {}).get("name") == "palisade-injection",
          "the injection ConfigMap is not mounted where --injection-config points")

    service = one(objects, "Service", "palisade")
    check(matches(service["spec"]["selector"], labels), "Service selector misses the pods")
    service_ports = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    check({port: ports.get(target) for port, target in service_ports.items()}
          == {15012: 15012, 15017: 15017, 15014: 15014},
          f"Service ports {service_ports}")

    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    check(len(pdbs) == 1, "one PodDisruptionBudget expected")
    for pdb in pdbs:
        check(matches(pdb["spec"]["selector"]["matchLabels"], labels), "PDB selector misses pods")
        check(pdb["spec"].get("maxUnavailable") == want["pdb_max_unavailable"], "PDB maxUnavailable")
        check(pdb["spec"].get("maxUnavailable", 0) < want["replicas"],
              "the PDB lets every replica go at once")


def check_injection(objects, ns, want):
    config_map = one(objects, "ConfigMap", "palisade-injection")
    text = config_map.get("data", {}).get("injection.yaml", "")
    config = yaml.load(text, Loader=UniqueKeyLoader) or {}
    check(config.get("image") == want["proxy_image"], f"proxy image {config.get('image')}")
    check(config.get("imagePullPolicy") == want["proxy_pull_policy"], "proxy imagePullPolicy")
    check(config.get("caAddress") == want["ca_address"].format(ns=ns),
          f"caAddress {config.get('caAddress')}")
    # The namespace and trust domain come from the controller's flags; a copy here would be
    # silently overridden, so the chart writes none.
    allowed = {"image", "imagePullPolicy", "caAddress", "proxyResources", "initResources"}
    check(set(config) <= allowed, f"unexpected injection keys {sorted(set(config) - allowed)}")


def check_mesh_policy(objects, ns, want):
    policies = [o for o in objects if o["kind"] == "PeerAuthentication"]
    if want["mesh_pa"] is None:
        check(not policies, "a mesh-wide PeerAuthentication was rendered though not enabled")
        return
    check(len(policies) == 1, "one mesh-wide PeerAuthentication expected")
    for pa in policies:
        check(pa["apiVersion"] == "security.palisade.dev/v1", "PeerAuthentication apiVersion")
        check(pa["metadata"]["namespace"] == ns, "the mesh-wide policy is not in the root namespace")
        check("selector" not in pa["spec"], "a mesh-wide policy has no selector")
        check(pa["spec"].get("mtls", {}).get("mode") == want["mesh_pa"], "mesh-wide mode")


def report(case):
    for failure in failures:
        print(f"chart-check [{case}]: FAIL {failure}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in CASES:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(CASES)}}} NAMESPACE RENDERED.yaml")
    case, ns, path = sys.argv[1:]
    want = CASES[case]
    with open(path, encoding="utf-8") as f:
        objects = [o for o in yaml.load_all(f, Loader=UniqueKeyLoader) if o]
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    expected = sorted(
        ["ServiceAccount/palisade", "ClusterRole/palisade-controller",
         "ClusterRoleBinding/palisade-controller", "Role/palisade-controller",
         "RoleBinding/palisade-controller", "ConfigMap/palisade-injection",
         "Deployment/palisade", "Service/palisade", "PodDisruptionBudget/palisade",
         "MutatingWebhookConfiguration/palisade-sidecar-injector"]
        + (["PeerAuthentication/default"] if want["mesh_pa"] else []))
    check(kinds == expected, f"rendered {kinds}, expected {expected}")
    check(not any(o["kind"] == "Secret" for o in objects), "the chart renders a Secret")
    if failures:  # the checks below look inside these objects
        report(case)
    check_namespaces(objects, ns)
    check_rbac(objects, ns)
    check_webhook(objects, ns, want)
    check_deployment(objects, ns, want)
    check_injection(objects, ns, want)
    check_mesh_policy(objects, ns, want)
    if failures:
        report(case)
    print(f"chart-check [{case}]: {len(objects)} objects in {ns}: all assertions hold")


if __name__ == "__main__":
    main()
