#!/usr/bin/env python3
"""The monitoring, proven live: a real Prometheus scrapes a real operator and sidecar under
traffic, and every query of the chart's Grafana dashboard must return data; the alert
rules are loaded into the same Prometheus and must evaluate without error.

  live_metrics.py RENDERED.yaml

RENDERED.yaml is the chart rendered with the dashboard and the PrometheusRule on (it
holds both). The operator runs in local mode (examples/ into SQLite, its admin port on
loopback), the sidecar in front of the sample app with the snapshot the operator writes
(the README's demo), Prometheus scrapes both every second with the labels a PodMonitor /
ServiceMonitor would give (namespace, pod). Binaries: target/debug (built if missing).
Everything listens on loopback and stops at the end.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "debug")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer 200 on {url} within {seconds} s")


def request(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> int:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def rendered_parts(path: str) -> tuple[dict, dict]:
    dashboard = rules = None
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-dashboard"):
            dashboard = json.loads(doc["data"]["portcullis.json"])
        if doc["kind"] == "PrometheusRule":
            rules = {"groups": doc["spec"]["groups"]}
    if dashboard is None or rules is None:
        raise RuntimeError(f"{path}: render the chart with metrics.dashboard and metrics.prometheusRule enabled")
    return dashboard, rules


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    # What Grafana substitutes: the rate window (4 × the 1 s scrape interval would do; 30s
    # keeps several samples) and the namespace variable set to All.
    return expr.replace("$__rate_interval", "30s").replace("$namespace", ".*")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    dashboard, rules = rendered_parts(sys.argv[1])
    for binary in ("portcullis-operator", "portcullis-proxy", os.path.join("examples", "sample_app")):
        if not os.path.exists(os.path.join(BIN, binary)):
            subprocess.run(
                ["cargo", "build", "--quiet", "-p", "portcullis-operator", "-p", "portcullis-proxy", "--bins", "--example", "sample_app"],
                cwd=ROOT, check=True,
            )
            break
    if not shutil.which("prometheus"):
        raise RuntimeError("prometheus is not installed (apt-get install prometheus)")

    work = tempfile.mkdtemp(prefix="portcullis-live-")
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(os.path.join(work, f"{name}.log"), "w")
        p = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
        procs.append(p)
        return p

    ok = False
    try:
        ports = {k: free_port() for k in ("op_admin", "proxy", "proxy_admin", "app", "prom")}
        state = os.path.join(work, "state")
        manifests = os.path.join(work, "manifests")
        shutil.copytree(os.path.join(ROOT, "examples"), manifests)
        start("operator", [os.path.join(BIN, "portcullis-operator"), "local", "--manifests", manifests, "--state-dir", state,
                           "--admin-addr", f"127.0.0.1:{ports['op_admin']}"])
        snapshot = os.path.join(state, "snapshot.json")
        deadline = time.time() + 60
        while not (os.path.exists(snapshot) and os.path.getsize(snapshot) > 0):
            if time.time() > deadline:
                raise RuntimeError("the operator wrote no snapshot: " + open(os.path.join(work, "operator.log")).read()[-2000:])
            time.sleep(0.2)
        wait_http(f"http://127.0.0.1:{ports['op_admin']}/metrics", 30, "the operator's admin port")
        start("app", [os.path.join(BIN, "examples", "sample_app"), f"127.0.0.1:{ports['app']}"])
        start("proxy", [os.path.join(BIN, "portcullis-proxy"), "--listen", f"127.0.0.1:{ports['proxy']}",
                        "--admin-listen", f"127.0.0.1:{ports['proxy_admin']}", "--upstream", f"http://127.0.0.1:{ports['app']}",
                        "--snapshot-file", snapshot, "--namespace", "shop", "--pod-label", "app=sample-api"])
        wait_http(f"http://127.0.0.1:{ports['proxy_admin']}/readyz", 30, "the sidecar")

        with open(os.path.join(work, "rules.yaml"), "w") as f:
            yaml.safe_dump(rules, f)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [os.path.join(work, "rules.yaml")],
            "scrape_configs": [
                {"job_name": "portcullis-operator", "static_configs": [
                    {"targets": [f"127.0.0.1:{ports['op_admin']}"], "labels": {"namespace": "portcullis-system", "pod": "portcullis-0"}}]},
                {"job_name": "portcullis-sidecars", "static_configs": [
                    {"targets": [f"127.0.0.1:{ports['proxy_admin']}"], "labels": {"namespace": "shop", "pod": "sample-api-0"}}]},
            ],
        }
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            yaml.safe_dump(config, f)
        prom = f"http://127.0.0.1:{ports['prom']}"
        start("prometheus", ["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/tsdb",
                             f"--web.listen-address=127.0.0.1:{ports['prom']}"])
        wait_http(f"{prom}/-/ready", 60, "Prometheus")

        # Traffic for 20 s: allowed, unauthenticated, forbidden and wrong-key requests.
        secrets = open(os.path.join(state, "secrets", "shop.yaml")).read()
        key = base64.b64decode(re.search(r"# bob-cli-apikey\n(?:.*\n)*?.*api-key: (\S+)", secrets).group(1)).decode()
        base = f"http://127.0.0.1:{ports['proxy']}"
        counts: dict[int, int] = {}
        # Edits to a manifest while the traffic runs, so that the operator reconciles (and
        # bumps the revision) inside the dashboard's rate windows too.
        users_file = os.path.join(manifests, "20-users.yaml")
        users = open(users_file).read()
        edits = 0
        next_edit = time.time()
        end = time.time() + 20
        while time.time() < end:
            if time.time() >= next_edit:
                edits += 1
                with open(users_file, "w") as f:
                    f.write(re.sub(r"displayName: (.*)", lambda m: f"displayName: {m.group(1)} {edits}", users, count=1))
                next_edit = time.time() + 4
            for status in (
                request(f"{base}/healthz"),
                request(f"{base}/api/v1/items", {"X-API-Key": key}),
                request(f"{base}/api/v1/items"),
                request(f"{base}/api/v1/items", {"X-API-Key": key}, "POST"),
                request(f"{base}/api/v1/items", {"X-API-Key": "pck_guessed"}),
            ):
                counts[status] = counts.get(status, 0) + 1
            time.sleep(0.05)
        print(f"traffic: {sum(counts.values())} requests, by status {dict(sorted(counts.items()))}; {edits} manifest edits")
        time.sleep(3)  # the last scrape

        failures = 0
        for title, expr in dashboard_queries(dashboard):
            q = grafana_to_promql(expr)
            with urllib.request.urlopen(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q}), timeout=10) as r:
                answer = json.load(r)
            result = answer["data"]["result"] if answer.get("status") == "success" else []
            values = [float(s["value"][1]) for s in result]
            finite = [v for v in values if not math.isnan(v)]
            if finite:
                shown = ", ".join(f"{json.dumps(s['metric'], sort_keys=True)}={float(s['value'][1]):.4g}" for s in result[:3])
                print(f"ok   {title}: {len(result)} series ({shown})")
            else:
                print(f"FAIL {title}: no data for {q} ({answer.get('error') or values})")
                failures += 1
        with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=10) as r:
            groups = json.load(r)["data"]["groups"]
        evaluated = [(rule["name"], rule.get("health"), rule.get("lastError")) for g in groups for rule in g["rules"]]
        for name, health, error in evaluated:
            if health != "ok":
                print(f"FAIL alert {name}: health {health} {error}")
                failures += 1
        print(f"alerts loaded and evaluated in Prometheus: {len(evaluated)} ({', '.join(n for n, _, _ in evaluated)})")
        total = len(dashboard_queries(dashboard))
        print(f"dashboard queries: {total - failures} returned data, {failures} failed")
        ok = failures == 0 and total > 0 and len(evaluated) > 0
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
