#!/usr/bin/env python3
"""`helm lint` and `helm template` through Helm's own library (PyPI `helm-sdkpy`).

helm-sdkpy has no template action, only install. So this runs a real `helm install`
against a minimal Kubernetes API server of its own on loopback (discovery for the kinds
the chart uses, release storage in Secrets, create answered with the object) and
records every object Helm sends: exactly what `helm template` would print, rendered by
Helm itself, values schema checked, `lookup` answered (nothing exists yet).

  helm_render.py lint CHART [VALUES.yaml]           lint (with these values instead of values.yaml)
  helm_render.py template CHART OUT.yaml [VALUES…]  render to OUT.yaml (NOTES in OUT.yaml.notes)
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml

# Helm's library (Go) reads the environment the process started with, not later changes:
# so set it and start again. Release records in memory (the Secret storage driver speaks
# protobuf), Helm's homes in a scratch directory.
if os.environ.get("HELM_DRIVER") != "memory":
    env = dict(os.environ, HELM_DRIVER="memory")
    home = tempfile.mkdtemp(prefix="helm-home-")
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = os.path.join(home, var.lower())
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)

# group/version → [(kind, plural, namespaced)]
RESOURCES = {
    "v1": [
        ("Namespace", "namespaces", False),
        ("Secret", "secrets", True),
        ("ConfigMap", "configmaps", True),
        ("Service", "services", True),
        ("ServiceAccount", "serviceaccounts", True),
        ("PersistentVolumeClaim", "persistentvolumeclaims", True),
        ("Pod", "pods", True),
    ],
    "apps/v1": [("Deployment", "deployments", True)],
    "policy/v1": [("PodDisruptionBudget", "poddisruptionbudgets", True)],
    "rbac.authorization.k8s.io/v1": [
        ("ClusterRole", "clusterroles", False),
        ("ClusterRoleBinding", "clusterrolebindings", False),
        ("Role", "roles", True),
        ("RoleBinding", "rolebindings", True),
    ],
    "admissionregistration.k8s.io/v1": [("MutatingWebhookConfiguration", "mutatingwebhookconfigurations", False)],
    "networking.k8s.io/v1": [("NetworkPolicy", "networkpolicies", True)],
    "apiextensions.k8s.io/v1": [("CustomResourceDefinition", "customresourcedefinitions", False)],
    "monitoring.coreos.com/v1": [
        ("ServiceMonitor", "servicemonitors", True),
        ("PodMonitor", "podmonitors", True),
        ("PrometheusRule", "prometheusrules", True),
    ],
    "cert-manager.io/v1": [("Issuer", "issuers", True), ("Certificate", "certificates", True)],
    "portcullis.io/v1alpha1": [
        ("Role", "roles", False),
        ("User", "users", False),
        ("Team", "teams", False),
        ("APIKey", "apikeys", True),
        ("Source", "sources", True),
        ("AccessPolicy", "accesspolicies", True),
    ],
}
KUBE_VERSION = {"major": "1", "minor": "34", "gitVersion": "v1.34.0", "platform": "linux/amd64"}


class FakeApi:
    """The part of a Kubernetes API server that `helm install --wait=false` talks to."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.created: list[dict] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b"{}"
                return json.loads(raw or b"{}")

            def do_GET(self):
                api.get(self)

            def do_POST(self):
                api.post(self)

            def do_PUT(self):
                api.put(self)

            def do_PATCH(self):
                api.put(self)

            def do_DELETE(self):
                self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()

    @staticmethod
    def not_found(h, what: str) -> None:
        h.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": f"{what} not found"})

    def get(self, h) -> None:
        url = urlparse(h.path)
        path = url.path.rstrip("/")
        if path == "/version":
            return h.reply(200, KUBE_VERSION)
        if path == "/api":
            return h.reply(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = []
            for gv in RESOURCES:
                if "/" in gv:
                    g, v = gv.split("/")
                    ver = {"groupVersion": gv, "version": v}
                    groups.append({"name": g, "versions": [ver], "preferredVersion": ver})
            return h.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        gv = path[len("/api/"):] if path.startswith("/api/") else path[len("/apis/"):]
        if gv in RESOURCES:
            res = [
                {"name": p, "singularName": k.lower(), "namespaced": ns, "kind": k,
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                for k, p, ns in RESOURCES[gv]
            ]
            return h.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res})
        with self.lock:
            if path in self.objects:
                return h.reply(200, self.objects[path])
            # A list: every stored object under this path, filtered by label selector.
            selector = parse_qs(url.query).get("labelSelector", [""])[0]
            wanted = dict(kv.split("=", 1) for kv in selector.split(",") if "=" in kv)
            items = [
                o for p, o in self.objects.items()
                if p.rsplit("/", 1)[0] == path
                and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
            ]
        if items or path.endswith("s") and path.count("/") in (3, 4, 5, 6) and not self.is_object_path(path):
            return h.reply(200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
        return self.not_found(h, path)

    @staticmethod
    def is_object_path(path: str) -> bool:
        parts = path.strip("/").split("/")
        base = 2 if parts[0] == "api" else 3
        rest = parts[base:]
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            rest = rest[2:]
        return len(rest) >= 2

    def post(self, h) -> None:
        obj = h.body()
        path = urlparse(h.path).path.rstrip("/")
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", None) if False else None
        meta["uid"] = f"uid-{len(self.created)}"
        meta["resourceVersion"] = "1"
        meta["creationTimestamp"] = "2026-01-01T00:00:00Z"
        with self.lock:
            self.objects[f"{path}/{meta['name']}"] = obj
            release_storage = obj.get("kind") == "Secret" and (meta.get("labels") or {}).get("owner") == "helm"
            if not release_storage:
                self.created.append(json.loads(json.dumps(obj)))
        h.reply(201, obj)

    def put(self, h) -> None:
        obj = h.body()
        path = urlparse(h.path).path.rstrip("/")
        with self.lock:
            if "metadata" in obj and "kind" in obj:
                self.objects[path] = obj
            current = self.objects.get(path, obj)
        h.reply(200, current)


def strip_server_fields(obj: dict) -> dict:
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        obj.get("metadata", {}).pop(key, None)
    return obj


def kubeconfig(port: int, directory: str) -> str:
    path = os.path.join(directory, "kubeconfig")
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "render",
        "clusters": [{"name": "render", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "render", "user": {"token": "render"}}],
        "contexts": [{"name": "render", "context": {"cluster": "render", "user": "render", "namespace": "portcullis-system"}}],
    }
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def load_values(files: list[str]) -> dict:
    merged: dict = {}

    def merge(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    for f in files:
        with open(f) as fh:
            merge(merged, yaml.safe_load(fh) or {})
    return merged


def template(chart: str, out: str, value_files: list[str], release: str = "portcullis", namespace: str = "portcullis-system") -> int:
    import helm_sdkpy

    api = FakeApi()
    work = tempfile.mkdtemp(prefix="helm-render-")
    try:
        cfg = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig(api.port, work))
        result = asyncio.run(
            helm_sdkpy.Install(cfg).run(release, os.path.abspath(chart), values=load_values(value_files) or None, wait=False, timeout=60)
        )
    except Exception as err:  # noqa: BLE001 - Helm's error is the report
        print(f"FAIL: helm install (template) of {chart} with {value_files or 'default values'}: {err}", file=sys.stderr)
        return 1
    finally:
        api.stop()
        shutil.rmtree(work, ignore_errors=True)
    docs = [strip_server_fields(o) for o in api.created]
    with open(out, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    notes = (result.get("info") or {}).get("notes", "")
    with open(out + ".notes", "w") as f:
        f.write(notes)
    kinds: dict[str, int] = {}
    for d in docs:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    print(f"rendered {len(docs)} objects ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}) → {out}")
    return 0


def lint(chart: str, value_files: list[str]) -> int:
    import helm_sdkpy

    work = tempfile.mkdtemp(prefix="helm-lint-")
    try:
        target = chart
        if value_files:
            # Helm's lint action takes the chart's own values.yaml: lint a copy with ours.
            target = os.path.join(work, os.path.basename(os.path.abspath(chart)))
            shutil.copytree(chart, target)
            base = load_values([os.path.join(chart, "values.yaml")] + value_files)
            with open(os.path.join(target, "values.yaml"), "w") as f:
                yaml.safe_dump(base, f)
        cfg = helm_sdkpy.Configuration(namespace="portcullis-system")
        result = asyncio.run(helm_sdkpy.Lint(cfg).run(os.path.abspath(target)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    messages = result.get("Messages") or []
    # Severity: 1 info, 2 warning, 3 error.
    bad = [m for m in messages if m.get("Severity", 0) >= 2] + [{"Err": e} for e in (result.get("Errors") or [])]
    for m in messages:
        print(f"  lint: severity {m.get('Severity')} {m.get('Path')} {m.get('Err')}")
    if bad:
        print(f"FAIL: helm lint {chart} {value_files}: {bad}", file=sys.stderr)
        return 1
    print(f"helm lint {chart} ({', '.join(value_files) or 'default values'}): {result.get('TotalChartsLinted')} chart linted, 0 warnings, 0 errors")
    return 0


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "lint":
        return lint(sys.argv[2], sys.argv[3:])
    if len(sys.argv) >= 4 and sys.argv[1] == "template":
        return template(sys.argv[2], sys.argv[3], sys.argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
