#!/usr/bin/env python3
"""Offline checks of rendered chatfleet manifests, the dashboard and the alert rules.

Run by bin/check-k8s (which renders the overlays and provides a venv with kubernetes-validate,
jsonschema, PyYAML and promql-parser); not meant to be run by hand. Prints one `FAIL ...` line
per problem and exits 1 if there was any, else prints a one-line summary and exits 0.

What it checks, per rendered overlay:
- every built-in resource against the Kubernetes OpenAPI schema of --kube-version, strictly
  (unknown fields are errors, as `kubectl apply` treats them), with kubernetes-validate;
- every custom resource against the schema vendored in k8s/schemas/ (an unknown kind fails);
- what no schema can see: references between objects (Services, PDBs, HPA, ScaledObject,
  ServiceMonitor, Secrets, ConfigMaps), the drain deadlines against the grace periods, the
  ScaledObject's triggers against redis.partitions/key_prefix (and their scaler type against the
  Redis the overlay targets: `redis-cluster-streams` for a --cluster-overlay, else
  `redis-streams`), security and resource settings,
  and that the ConfigMaps carry config/production.toml and the dashboard unchanged;
and, once: the dashboard's and the PrometheusRule's queries parse as PromQL (promql-parser) and
select only allowed metrics.
"""

import argparse
import json
import os
import re
import sys
import tomllib

import jsonschema
import promql_parser
import yaml
from kubernetes_validate import utils as kv_utils

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
}
WORKLOADS = ("Deployment", "StatefulSet")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, msg):
        self.items.append(f"{where}: {msg}")


def kn(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


# ---------------------------------------------------------------------------------------------
# Metric names allowed in queries


def allowed_metrics(metrics_rs, extras):
    """{name: type} from `pub const X: &str = "chatfleet_..."` in src/metrics.rs, typed by the
    doc comment above it (`/// Histogram ...`), plus the extras (name:type)."""
    text = open(metrics_rs, encoding="utf-8").read()
    found = {}
    for m in re.finditer(
        r'((?:[ \t]*///[^\n]*\n)*)[ \t]*pub const [A-Z0-9_]+: &str = "(chatfleet_[a-z0-9_]+)";', text
    ):
        doc, name = m.group(1), m.group(2)
        kind = "untyped"
        for t in ("Histogram", "Counter", "Gauge"):
            if re.search(r"///\s*" + t, doc):
                kind = t.lower()
        found[name] = kind
    for e in extras:
        name, _, kind = e.partition(":")
        found.setdefault(name, kind or "untyped")
    return found


def grafana_to_promql(expr):
    """Grafana's variables are not PromQL: give them values that parse the same way."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "x", expr)


def check_query(expr, allowed, where, problems, also_allowed=()):
    """Parses `expr` as PromQL and checks every metric it selects. Returns how many it selects."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", expr, re.S)
    if m:  # Grafana's variable query function, around a selector
        expr = m.group(1)
    try:
        ast = promql_parser.parse(grafana_to_promql(expr))
    except ValueError as e:
        problems.add(where, f"PromQL does not parse ({e}): {expr!r}")
        return 0
    names = []
    promql_parser.walk(
        ast, pre_visit=lambda n: names.append(n.name) if isinstance(n, promql_parser.VectorSelector) else None
    )
    if not names:
        problems.add(where, f"query selects no metric: {expr!r}")
    for n in names:
        if n in allowed or n in also_allowed:
            continue
        base = next((n[: -len(s)] for s in HIST_SUFFIXES if n.endswith(s)), None)
        if base and allowed.get(base) in ("histogram", "untyped"):
            continue
        problems.add(where, f"unknown metric {n} (not in src/metrics.rs nor the agreed extras)")
    return len(names)


def check_dashboard(path, allowed, problems):
    where = os.path.relpath(path)
    try:
        dash = json.load(open(path, encoding="utf-8"))
    except (OSError, ValueError) as e:
        problems.add(where, f"not valid JSON: {e}")
        return 0
    for key in ("uid", "title", "panels"):
        if not dash.get(key):
            problems.add(where, f"missing `{key}`")
    queries, ids = 0, set()

    def walk(panels):
        nonlocal queries
        for p in panels:
            pid = p.get("id")
            if pid in ids:
                problems.add(where, f"duplicate panel id {pid}")
            ids.add(pid)
            if p.get("type") != "row":
                targets = p.get("targets") or []
                if not targets:
                    problems.add(where, f"panel {p.get('title')!r} has no query")
                for t in targets:
                    if not t.get("expr"):
                        problems.add(where, f"panel {p.get('title')!r} has a target without expr")
                        continue
                    queries += 1
                    check_query(t["expr"], allowed, f"{where} panel {p.get('title')!r}", problems)
            walk(p.get("panels") or [])

    walk(dash.get("panels") or [])
    for v in (dash.get("templating") or {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            queries += 1
            check_query(q, allowed, f"{where} variable {v.get('name')}", problems)
    return queries


def check_rules(doc, allowed, where, problems):
    n = 0
    for g in (doc.get("spec") or {}).get("groups") or []:
        for r in g.get("rules") or []:
            n += 1
            check_query(
                str(r.get("expr", "")),
                allowed,
                f"{where} rule {r.get('alert') or r.get('record')}",
                problems,
                ("up",),
            )
    return n


# ---------------------------------------------------------------------------------------------
# Schemas


def validate_schema(doc, kube_version, schema_dir, where, problems):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        schema = json.load(open(os.path.join(schema_dir, CRD_SCHEMAS[key]), encoding="utf-8"))
        for e in sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in e.path) or "(root)"
            problems.add(where, f"{path}: {e.message[:300]}")
        return "crd"
    try:
        kv_utils.validate(doc, kube_version, strict=True)
    except kv_utils.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(root)"
        problems.add(where, f"{path}: {e.message[:300]} (Kubernetes {e.version} schema)")
    except kv_utils.SchemaNotFoundError as e:
        # Also what an unvendored custom resource ends in: no schema is no check, so it fails.
        problems.add(where, f"{e.message}; a custom resource needs its schema in k8s/schemas/")
    return "builtin"


# ---------------------------------------------------------------------------------------------
# References and invariants


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_value(container, name):
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value")
    return None


def expected_partitions(config_dir, containers):
    merged = {}
    for name in ("default.toml", "production.toml"):
        with open(os.path.join(config_dir, name), "rb") as f:
            merged.update(tomllib.load(f).get("redis", {}))
    parts, prefix = int(merged["partitions"]), merged["key_prefix"]
    for c in containers:
        if env_value(c, "CHATFLEET__REDIS__PARTITIONS"):
            parts = int(env_value(c, "CHATFLEET__REDIS__PARTITIONS"))
        if env_value(c, "CHATFLEET__REDIS__KEY_PREFIX"):
            prefix = env_value(c, "CHATFLEET__REDIS__KEY_PREFIX")
    return parts, prefix


def is_int_string(v):
    return isinstance(v, str) and re.fullmatch(r"[0-9]+", v) is not None


def check_overlay(name, docs, args, problems):
    by_kind = {}
    seen = set()
    for d in docs:
        k = (d.get("kind"), (d.get("metadata") or {}).get("name"))
        if k in seen:
            problems.add(name, f"duplicate object {k[0]}/{k[1]}")
        seen.add(k)
        by_kind.setdefault(d.get("kind"), []).append(d)

    def get(kind, nm):
        return next((d for d in by_kind.get(kind, []) if d["metadata"]["name"] == nm), None)

    secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", [])}
    external = set(args.external_secret.get(name, []))
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    workloads = [d for k in WORKLOADS for d in by_kind.get(k, [])]
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in by_kind.get("HorizontalPodAutoscaler", [])}
    scaled |= {d["spec"]["scaleTargetRef"]["name"] for d in by_kind.get("ScaledObject", [])}

    def secret_ref(where, sname, key):
        if sname in secrets:
            data = {**(secrets[sname].get("data") or {}), **(secrets[sname].get("stringData") or {})}
            if key not in data:
                problems.add(where, f"Secret {sname} has no key {key!r}")
        elif sname not in external:
            problems.add(where, f"Secret {sname} is neither rendered nor declared external for {name}")

    # The app ConfigMap carries config/production.toml, byte for byte.
    prod_toml = open(os.path.join(args.config_dir, "production.toml"), encoding="utf-8").read()
    app_cms = [c for n, c in configmaps.items() if n.startswith("chatfleet-config")]
    if len(app_cms) != 1:
        problems.add(name, f"expected one chatfleet-config ConfigMap, found {len(app_cms)}")
    for c in app_cms:
        if (c.get("data") or {}).get("production.toml") != prod_toml:
            problems.add(f"{name} {kn(c)}", "production.toml differs from config/production.toml")
    dash = configmaps.get("chatfleet-dashboard")
    if not dash:
        problems.add(name, "ConfigMap chatfleet-dashboard (Grafana dashboard) is missing")
    else:
        if (dash["metadata"].get("labels") or {}).get("grafana_dashboard") != "1":
            problems.add(f"{name} {kn(dash)}", 'needs label grafana_dashboard: "1"')
        if (dash.get("data") or {}).get("chatfleet.json") != open(args.dashboard, encoding="utf-8").read():
            problems.add(f"{name} {kn(dash)}", "chatfleet.json differs from k8s/dashboards/chatfleet.json")

    for w in workloads:
        where = f"{name} {kn(w)}"
        spec, tpl = w["spec"], w["spec"]["template"]
        pod_labels = tpl["metadata"].get("labels") or {}
        if not labels_match(spec["selector"].get("matchLabels"), pod_labels):
            problems.add(where, "selector.matchLabels does not match the pod template labels")
        if w["kind"] == "Deployment" and w["metadata"]["name"] in scaled and "replicas" in spec:
            problems.add(
                where, "sets spec.replicas although an autoscaler owns it (apply would reset the fleet)"
            )
        pod = tpl["spec"]
        psc = pod.get("securityContext") or {}
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                problems.add(
                    where, f"volume {v['name']} uses ConfigMap {v['configMap']['name']}, not rendered"
                )
            if (
                "secret" in v
                and v["secret"]["secretName"] not in secrets
                and v["secret"]["secretName"] not in external
            ):
                problems.add(
                    where, f"volume {v['name']} uses Secret {v['secret']['secretName']}, not rendered"
                )
        for c in pod.get("containers") or []:
            cw = f"{where} container {c['name']}"
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        problems.add(cw, f"resources.{part}.{r} is not set")
            csc = c.get("securityContext") or {}
            if not (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                problems.add(cw, "must run as non-root (runAsNonRoot: true)")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.add(cw, "needs readOnlyRootFilesystem: true")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.add(cw, "needs allowPrivilegeEscalation: false")
            ports = {p.get("name") for p in c.get("ports") or []}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                for h in ("httpGet", "tcpSocket"):
                    port = ((c.get(probe) or {}).get(h) or {}).get("port")
                    if isinstance(port, str) and port not in ports:
                        problems.add(cw, f"{probe} uses port {port!r}, which the container does not declare")
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret_ref(cw, ref["name"], ref["key"])
            for m in c.get("volumeMounts") or []:
                if m["name"] not in volumes and not any(
                    t["metadata"]["name"] == m["name"] for t in spec.get("volumeClaimTemplates") or []
                ):
                    problems.add(cw, f"mounts volume {m['name']}, which the pod does not define")
            if not (c.get("image") or "").split("/")[-1].startswith("chatfleet"):
                continue
            # chatfleet containers: the contract of bin/chatfleet.rs and config/production.toml.
            a = c.get("args") or []
            if "--config" not in a or a[a.index("--config") + 1 : a.index("--config") + 2] != [
                "/etc/chatfleet/production.toml"
            ]:
                problems.add(cw, "must run with --config /etc/chatfleet/production.toml")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
            cfg_vol = volumes.get(mounts.get("/etc/chatfleet", ""), {})
            if not str((cfg_vol.get("configMap") or {}).get("name", "")).startswith("chatfleet-config"):
                problems.add(cw, "must mount the chatfleet-config ConfigMap at /etc/chatfleet")
            url = next((e for e in c.get("env") or [] if e.get("name") == "CHATFLEET__REDIS__URL"), None)
            if not url or not (url.get("valueFrom") or {}).get("secretKeyRef"):
                problems.add(cw, "CHATFLEET__REDIS__URL must come from a Secret (secretKeyRef)")
            role = a[0] if a else ""
            cports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            if cports.get("metrics") != 9090:
                problems.add(cw, "needs container port `metrics` 9090 (metrics.listen)")
            grace_ms = int(pod.get("terminationGracePeriodSeconds", 30)) * 1000
            if role == "gateway":
                if cports.get("http") != 8080:
                    problems.add(cw, "needs container port `http` 8080 (gateway.listen)")
                if ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path") != "/readyz":
                    problems.add(cw, "readiness probe must be GET /readyz")
                if ((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path") != "/healthz":
                    problems.add(cw, "liveness probe must be GET /healthz")
                drain = env_value(c, "CHATFLEET__GATEWAY__DRAIN_TIMEOUT_MS")
                sleep_ms = (
                    int(
                        (
                            (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get(
                                "seconds", 0
                            )
                        )
                    )
                    * 1000
                )
                if not drain:
                    problems.add(
                        cw,
                        "set CHATFLEET__GATEWAY__DRAIN_TIMEOUT_MS explicitly (it must fit the grace period)",
                    )
                elif sleep_ms + int(drain) >= grace_ms:
                    problems.add(
                        cw, f"preStop {sleep_ms} ms + gateway drain {drain} ms must be < grace {grace_ms} ms"
                    )
            elif role == "worker":
                drain = env_value(c, "CHATFLEET__WORKER__DRAIN_TIMEOUT_MS")
                if not drain:
                    problems.add(
                        cw,
                        "set CHATFLEET__WORKER__DRAIN_TIMEOUT_MS explicitly (it must fit the grace period)",
                    )
                elif int(drain) + 10_000 > grace_ms:
                    problems.add(
                        cw,
                        f"worker drain {drain} ms must be at least 10 s below the grace period {grace_ms} ms",
                    )
            else:
                problems.add(cw, f"unknown role {role!r} (expected gateway or worker)")

    def pods_for(selector):
        return [
            w
            for w in workloads
            if labels_match(selector, w["spec"]["template"]["metadata"].get("labels") or {})
        ]

    for s in by_kind.get("Service", []):
        where = f"{name} {kn(s)}"
        targets = pods_for(s["spec"].get("selector") or {})
        if not targets:
            problems.add(where, "selector matches no workload")
        for p in s["spec"].get("ports") or []:
            tp = p.get("targetPort")
            if isinstance(tp, str):
                for w in targets:
                    names = {
                        cp.get("name")
                        for c in w["spec"]["template"]["spec"]["containers"]
                        for cp in c.get("ports") or []
                    }
                    if tp not in names:
                        problems.add(where, f"targetPort {tp!r} is not a port of {kn(w)}")
    for p in by_kind.get("PodDisruptionBudget", []):
        if not pods_for(p["spec"]["selector"].get("matchLabels") or {}):
            problems.add(f"{name} {kn(p)}", "selector matches no workload")
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h["spec"]["scaleTargetRef"]
        if not get(ref["kind"], ref["name"]):
            problems.add(f"{name} {kn(h)}", f"scaleTargetRef {ref['kind']}/{ref['name']} is not rendered")
        if h["spec"].get("minReplicas", 1) > h["spec"]["maxReplicas"]:
            problems.add(f"{name} {kn(h)}", "minReplicas > maxReplicas")
    for t in by_kind.get("TriggerAuthentication", []):
        for r in t["spec"].get("secretTargetRef") or []:
            secret_ref(f"{name} {kn(t)}", r["name"], r["key"])
    for m in by_kind.get("ServiceMonitor", []):
        where = f"{name} {kn(m)}"
        svcs = [
            s
            for s in by_kind.get("Service", [])
            if labels_match(m["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels") or {})
        ]
        if not svcs:
            problems.add(where, "selector matches no Service")
        for ep in m["spec"].get("endpoints") or []:
            for s in svcs:
                if ep.get("port") not in {p.get("name") for p in s["spec"].get("ports") or []}:
                    problems.add(where, f"endpoint port {ep.get('port')!r} is not a port of {kn(s)}")
    for so in by_kind.get("ScaledObject", []):
        check_scaledobject(name, so, get, args, problems)


def check_scaledobject(name, so, get, args, problems):
    where = f"{name} {kn(so)}"
    spec = so["spec"]
    ref = spec["scaleTargetRef"]
    target = get(ref.get("kind", "Deployment"), ref["name"])
    if not target:
        problems.add(where, f"scaleTargetRef {ref['name']} is not rendered")
        return
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        problems.add(where, "minReplicaCount > maxReplicaCount")
    containers = target["spec"]["template"]["spec"]["containers"]
    parts, prefix = expected_partitions(args.config_dir, containers)
    want = {f"{prefix}:{{p{p:02}}}:turns" for p in range(parts)}
    lag, pending, names = set(), set(), []
    # The plain scaler cannot follow a Cluster's MOVED replies, and the overlay says which Redis.
    kind = "redis-cluster-streams" if name in args.cluster_overlay else "redis-streams"
    wrong_type = []
    for i, t in enumerate(spec.get("triggers") or []):
        tw = f"{where} trigger {t.get('name') or i}"
        names.append(t.get("name"))
        auth = (t.get("authenticationRef") or {}).get("name")
        if auth and not get("TriggerAuthentication", auth):
            problems.add(tw, f"TriggerAuthentication {auth} is not rendered")
        if t.get("type") in ("redis-streams", "redis-cluster-streams") and t.get("type") != kind:
            wrong_type.append(t.get("name") or str(i))
        if t.get("type") not in ("redis-streams", "redis-cluster-streams"):
            continue
        md = t.get("metadata") or {}
        modes = [k for k in ("lagCount", "pendingEntriesCount", "streamLength") if k in md]
        if len(modes) != 1:
            problems.add(
                tw, f"needs exactly one of lagCount, pendingEntriesCount, streamLength (has {modes})"
            )
        for k in ("lagCount", "pendingEntriesCount", "streamLength", "activationLagCount"):
            if k in md and not is_int_string(md[k]):
                problems.add(tw, f"{k} must be a quoted integer, got {md[k]!r}")
        if "activationLagCount" in md and "lagCount" not in md:
            problems.add(tw, "activationLagCount only applies with lagCount")
        if md.get("consumerGroup") != "workers":
            problems.add(tw, "consumerGroup must be `workers` (src/store)")
        if not auth and not {"address", "addresses", "addressFromEnv", "addressesFromEnv"} & md.keys():
            problems.add(tw, "no Redis address (authenticationRef or metadata.address)")
        (lag if "lagCount" in md else pending).add(md.get("stream"))
    if wrong_type:
        problems.add(where, f"{len(wrong_type)} trigger(s) ({', '.join(wrong_type[:3])}...) must be {kind} in this overlay")
    for label, got in (("lag", lag), ("pending", pending)):
        if got != want:
            missing, extra = sorted(want - got)[:3], sorted(got - want)[:3]
            problems.add(
                where,
                f"{label} triggers must cover exactly the {parts} streams of redis.partitions/key_prefix "
                f"(missing {missing}, unexpected {extra}); rerun k8s/gen-scaledobject.py",
            )
    if len(set(names)) != len(names) or None in names:
        problems.add(where, "trigger names must be set and unique (the formula refers to them)")
    mods = (spec.get("advanced") or {}).get("scalingModifiers") or {}
    if mods:
        used = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", mods.get("formula", "")))
        if used != set(names):
            problems.add(
                where,
                f"formula must sum every trigger: missing {sorted(set(names) - used)[:3]}, unknown {sorted(used - set(names))[:3]}",
            )
        for k in ("target", "activationTarget"):
            if k in mods and not re.fullmatch(r"[0-9]+(\.[0-9]+)?", mods[k]):
                problems.add(where, f"scalingModifiers.{k} must be a number in a string")
        if "target" not in mods:
            problems.add(where, "scalingModifiers needs a target")
        turns = env_value(containers[0], "CHATFLEET__WORKER__MAX_CONCURRENT_TURNS")
        if turns and float(mods.get("target", 0)) > int(turns):
            problems.add(
                where, f"target {mods['target']} turns per worker exceeds worker.max_concurrent_turns {turns}"
            )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kube-version", required=True)
    ap.add_argument("--schemas", required=True)
    ap.add_argument("--config-dir", required=True)
    ap.add_argument("--metrics-rs", required=True)
    ap.add_argument("--extra-metric", action="append", default=[])
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--overlay", action="append", default=[], help="NAME=RENDERED.yaml")
    ap.add_argument("--external-secret", action="append", default=[], help="OVERLAY=SECRET")
    ap.add_argument("--cluster-overlay", action="append", default=[], help="an overlay for Redis Cluster")
    args = ap.parse_args()
    ext = {}
    for e in args.external_secret:
        o, _, s = e.partition("=")
        ext.setdefault(o, []).append(s)
    args.external_secret = ext

    problems = Problems()
    allowed = allowed_metrics(args.metrics_rs, args.extra_metric)
    queries = check_dashboard(args.dashboard, allowed, problems)
    counts = {"builtin": 0, "crd": 0, "none": 0}
    rules = 0
    for spec in args.overlay:
        name, _, path = spec.partition("=")
        try:
            docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
        except yaml.YAMLError as e:
            problems.add(name, f"rendered YAML does not parse: {e}")
            continue
        for d in docs:
            where = f"{name} {kn(d)}"
            counts[validate_schema(d, args.kube_version, args.schemas, where, problems)] += 1
            if d.get("kind") == "PrometheusRule":
                rules += check_rules(d, allowed, where, problems)
        try:
            check_overlay(name, docs, args, problems)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            # A malformed object the schema step has already reported; do not hide the rest.
            problems.add(name, f"cross-reference checks stopped on a malformed object: {e!r}")
    for p in problems.items:
        print(f"FAIL {p}")
    print(
        f"manifests: {counts['builtin']} built-in objects (Kubernetes {args.kube_version}, strict), "
        f"{counts['crd']} custom resources (k8s/schemas), {rules} alert rules and {queries} dashboard "
        f"queries checked; {len(problems.items)} problem(s)"
    )
    return 1 if problems.items else 0


if __name__ == "__main__":
    sys.exit(main())
