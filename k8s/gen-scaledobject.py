#!/usr/bin/env python3
"""Writes the KEDA ScaledObject that scales chatfleet workers on partition stream lag + pending.

Why generated: KEDA's `redis-streams` trigger watches ONE stream, and one trigger measures either
the consumer group's lag (`lagCount`: turns not yet delivered to any worker) or its pending
entries (`pendingEntriesCount`: turns delivered and still running), never both. chatfleet has P
partition streams (`redis.partitions`, 64 by default), so "lag plus pending across partitions"
takes 2 x P triggers, summed by one `advanced.scalingModifiers` formula. Nobody should type 128
triggers by hand, and the stream names must match src/keys.rs exactly, so they are generated.

Why lag PLUS pending: a finished turn is acked and deleted from its stream (lua/chatfleet.lua),
so `lag + pending` is exactly the number of turns waiting or running. Dividing it by the turns
one worker should carry gives the worker count. Lag alone would scale in (and drain) workers in
the middle of long answers once the queue is empty; pending alone never wakes a worker from zero,
because nothing is delivered while no worker exists.

Redis Cluster: KEDA's `redis-streams` scaler talks to one server and does not follow MOVED
redirects, so against a Cluster it fails for every stream that node does not serve. `--cluster`
writes the same triggers as `redis-cluster-streams` (a cluster client per trigger), as a patch the
`production-cluster` overlay applies over the base ScaledObject: a strategic-merge patch replaces
a custom resource's lists whole, so its trigger list replaces the base one.

Usage:
    python3 k8s/gen-scaledobject.py            # rewrite k8s/base/worker-scaledobject.yaml
    python3 k8s/gen-scaledobject.py --cluster  # rewrite k8s/overlays/production-cluster/worker-scaledobject-cluster.yaml
    python3 k8s/gen-scaledobject.py [--cluster] --check    # exit 1 if the checked-in file is stale
    python3 k8s/gen-scaledobject.py --partitions 128 --prefix cf2 --output -   # to stdout

--partitions and --prefix default to redis.partitions and redis.key_prefix as the pods see them:
config/default.toml overlaid with config/production.toml (the file the pods load). So after a
change of either setting, rerun this and commit the result; `--check` (run by bin/check-k8s) fails
until then. The consumer group is `workers` (src/store). Only the Python standard library is used.
"""

import argparse
import difflib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUTPUT = os.path.join(HERE, "base", "worker-scaledobject.yaml")
CLUSTER_OUTPUT = os.path.join(HERE, "overlays", "production-cluster", "worker-scaledobject-cluster.yaml")
# Seconds between KEDA's reads of the streams (the ScaledObject's pollingInterval).
POLLING_INTERVAL = 5
# go-redis (KEDA's Redis client) re-reads a cluster client's slot map when it is older than this.
CLUSTER_STATE_RELOAD_SECS = 10


def redis_load(partitions: int, cluster: bool) -> str:
    """The comment on what the triggers cost Redis, with the arithmetic."""
    per_poll = 3 * partitions
    rate = per_poll / POLLING_INTERVAL
    text = f"""\
# Redis load of the triggers (KEDA 2.20 source, pkg/scalers/redis_streams_scaler.go): every
# pollingInterval each lag trigger sends INFO (no section: Redis builds its default sections,
# ~5 KB, only to read redis_version) and then XINFO GROUPS; each pending trigger sends XPENDING
# (summary form). So 2 x {partitions} triggers cost {partitions} INFO + {partitions} XINFO GROUPS + {partitions} XPENDING
# = {per_poll} commands per {POLLING_INTERVAL} s poll, {rate:.1f} commands/s ({partitions / POLLING_INTERVAL:.1f} of them INFO)."""
    if cluster:
        text += f"""
# Cluster: every trigger has its own cluster client (go-redis), which re-reads the slot map
# (CLUSTER SLOTS, from any node) when it is older than {CLUSTER_STATE_RELOAD_SECS} s: {2 * partitions} more per {max(POLLING_INTERVAL, CLUSTER_STATE_RELOAD_SECS)} s,
# {2 * partitions / max(POLLING_INTERVAL, CLUSTER_STATE_RELOAD_SECS):.1f}/s, and reads the command table (COMMAND) once when it starts. XINFO GROUPS
# and XPENDING go to the primary that serves their stream, INFO to each primary in turn."""
    text += """
# What that costs Redis, and why pollingInterval stays at 5 s: k8s/README.md ("Redis load of
# the KEDA triggers")."""
    return text



def redis_settings() -> dict:
    """redis.* from config/default.toml, overlaid with config/production.toml."""
    import tomllib  # Python >= 3.11

    merged: dict = {}
    for name in ("default.toml", "production.toml"):
        with open(os.path.join(ROOT, "config", name), "rb") as f:
            merged.update(tomllib.load(f).get("redis", {}))
    return merged


def stream_key(prefix: str, p: int) -> str:
    # Same format as src/keys.rs `Keys::stream`: `{:02}` pads to two digits and no further.
    return f"{prefix}:{{p{p:02}}}:turns"


def render(partitions: int, prefix: str, group: str, target: int, auth: str, cluster: bool = False) -> str:
    kind = "redis-cluster-streams" if cluster else "redis-streams"
    names = []
    triggers = []
    for p in range(partitions):
        lag, pending = f"lag_p{p:02}", f"pending_p{p:02}"
        names += [lag, pending]
        common = (
            f"    useCachedMetrics: true\n"
            f"    authenticationRef:\n"
            f"      name: {auth}\n"
            f"    metadata:\n"
            f'      stream: "{stream_key(prefix, p)}"\n'
            f"      consumerGroup: {group}\n"
        )
        triggers.append(
            f"  - type: {kind}\n"
            f"    name: {lag}\n" + common + f'      lagCount: "{target}"\n'
            f'      activationLagCount: "0"\n'
        )
        triggers.append(
            f"  - type: {kind}\n"
            f"    name: {pending}\n" + common + f'      pendingEntriesCount: "{target}"\n'
        )
    if cluster:
        return render_cluster_patch(partitions, prefix, group, target, auth) + "".join(triggers)
    # A folded block (>-) joins these lines with spaces: one expression, readable in review.
    per_line = 8
    formula = "\n        + ".join(" + ".join(names[i : i + per_line]) for i in range(0, len(names), per_line))
    header = f"""\
# GENERATED by k8s/gen-scaledobject.py -- do not edit by hand. bin/check-k8s fails when this file
# differs from the generator's output. Parameters: partitions={partitions} prefix={prefix}
# group={group} target={target} auth={auth}.
#
# Workers scale on (lag + pending) summed over all {partitions} partition streams, that is on the
# number of turns waiting or running. Read k8s/gen-scaledobject.py for why it takes 2 triggers per
# stream, and docs/operations.md ("Autoscaling workers") for tuning.
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: chatfleet-worker
  labels:
    app.kubernetes.io/name: chatfleet
    app.kubernetes.io/component: worker
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: chatfleet-worker
  # Seconds between KEDA's reads of the streams. It bounds how long the first turn waits while
  # there are zero workers (plus pod start), so it is short.
{indent(redis_load(partitions, False), "  ")}
  pollingInterval: {POLLING_INTERVAL}
  # Seconds without any turn before the last worker is removed (only matters when
  # minReplicaCount is 0). Long enough that a user reading an answer and replying does not pay a
  # cold start.
  cooldownPeriod: 300
  # 0 = scale to zero when idle; overlays raise it where cold-start TTFT matters (production).
  minReplicaCount: 0
  # Upper bound on workers; overlays set it from the Redis budget (docs/operations.md "Sizing").
  maxReplicaCount: 10
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleUp:
          # Queued turns are users waiting for a first token: add capacity at once (double, or
          # +4 pods, every 15 s, whichever is more).
          stabilizationWindowSeconds: 0
          selectPolicy: Max
          policies:
            - type: Percent
              value: 100
              periodSeconds: 15
            - type: Pods
              value: 4
              periodSeconds: 15
        scaleDown:
          # Removing a worker drains it (up to worker.drain_timeout_ms) and may restart turns
          # longer than that on other workers: shrink slowly, 10% a minute after 5 quiet minutes.
          stabilizationWindowSeconds: 300
          policies:
            - type: Percent
              value: 10
              periodSeconds: 60
    scalingModifiers:
      # Turns waiting or running, over all partitions. Each term is one trigger's raw value.
      formula: >-
        {formula}
      # Turns one worker should carry on average: desired workers = ceil(sum / target). Kept
      # below worker.max_concurrent_turns (256) so a burst has headroom while new pods start.
      # ESTIMATE until the benchmark issue measures a worker's real ceiling.
      target: "{target}"
      # Active (scale from zero) as soon as the sum exceeds 0: ONE waiting turn wakes a worker.
      activationTarget: "0"
      metricType: AverageValue
  # Every trigger reads one stream of the `{group}` consumer group. Which key it carries picks
  # what it measures: `lagCount` -> XINFO GROUPS lag, `pendingEntriesCount` -> XPENDING count.
  # Their values do not drive scaling while the formula above is set (KEDA gives the HPA only
  # the composed metric); they equal the target so each reads the same in isolation.
  # activationLagCount "0": a lag trigger is active at lag >= 1 (KEDA: active when value >
  # activation) -- the same one-waiting-turn rule, per stream.
  triggers:
"""
    return header + "".join(triggers)


def indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def render_cluster_patch(partitions: int, prefix: str, group: str, target: int, auth: str) -> str:
    return f"""\
# GENERATED by k8s/gen-scaledobject.py --cluster -- do not edit by hand. bin/check-k8s fails when
# this file differs from the generator's output. Parameters: partitions={partitions} prefix={prefix}
# group={group} target={target} auth={auth}.
#
# The production-cluster overlay applies this as a patch over base/worker-scaledobject.yaml: the
# same triggers (names, streams, targets; the base formula sums them), as `redis-cluster-streams`,
# which follows the Cluster's slot map. KEDA's plain `redis-streams` scaler cannot read a
# Cluster: every stream the one node it talks to does not serve answers MOVED.
# The TriggerAuthentication's `address` parameter (KEDA also reads it as `addresses`) carries the
# Cluster's seed nodes: one or more host:port, comma-separated (the Secret's redis-address).
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: chatfleet-worker
spec:
{indent(redis_load(partitions, True), "  ")}
  pollingInterval: {POLLING_INTERVAL}
  triggers:
"""


def main() -> int:
    redis = redis_settings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--partitions", type=int, default=redis["partitions"], help="redis.partitions (from config/)"
    )
    ap.add_argument("--prefix", default=redis["key_prefix"], help="redis.key_prefix (from config/)")
    ap.add_argument("--group", default="workers", help="consumer group (default workers)")
    ap.add_argument("--target", type=int, default=200, help="turns per worker (default 200)")
    ap.add_argument("--auth", default="chatfleet-redis", help="TriggerAuthentication name")
    ap.add_argument(
        "--cluster", action="store_true", help="redis-cluster-streams triggers, as the production-cluster patch"
    )
    ap.add_argument("--output", help="file to write, or - for stdout (default: the checked-in file)")
    ap.add_argument("--check", action="store_true", help="compare with --output instead of writing")
    a = ap.parse_args()
    if not 1 <= a.partitions <= 4096:
        ap.error("--partitions must be 1..=4096, as redis.partitions (src/settings.rs)")
    if a.target < 1:
        ap.error("--target must be at least 1")
    a.output = a.output or (CLUSTER_OUTPUT if a.cluster else DEFAULT_OUTPUT)
    text = render(a.partitions, a.prefix, a.group, a.target, a.auth, a.cluster)
    if a.check:
        try:
            with open(a.output, encoding="utf-8") as f:
                current = f.read()
        except OSError as e:
            print(f"gen-scaledobject: cannot read {a.output}: {e}", file=sys.stderr)
            return 1
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(True), text.splitlines(True), "checked-in", "generated", n=1
            )
            sys.stderr.writelines(list(diff)[:40])
            print(
                f"gen-scaledobject: {os.path.relpath(a.output)} is stale; run python3 k8s/gen-scaledobject.py"
                + (" --cluster" if a.cluster else ""),
                file=sys.stderr,
            )
            return 1
        return 0
    if a.output == "-":
        sys.stdout.write(text)
    else:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
