#!/usr/bin/env python3
"""Least-privilege RBAC of the chart, checked against the operator's code.

Reads operator/src (tests, local mode and the crdgen binary left out: they never talk to a
real API server) and collects every Kubernetes API call the operator makes: the kind of
each `kube::Api<K>` and the verbs used on it (get, list, watch, create, update, patch,
delete, status patches), plus the calls made for us by libraries (kube-runtime's
Controller/watches/owns: list + watch; finalizer(): patch; Recorder: events create +
patch; kube-lease-manager: leases get, create, patch).

  rbac_check.py needed                      print what the code calls
  rbac_check.py write                       regenerate charts/portcullis/files/rbac.yaml
  rbac_check.py check rendered.yaml         fail unless the rendered chart's ClusterRole and
                                            Role grant exactly that: no less, no more

A call the script cannot attribute to a kind (an `Api` it cannot type) is an error, never
skipped: give the variable an explicit `Api<Kind>` type.
"""

from __future__ import annotations

import glob
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "operator", "src")
CRDS = os.path.join(ROOT, "crds")
RBAC_FILE = os.path.join(ROOT, "charts", "portcullis", "files", "rbac.yaml")
SKIP_DIRS = ("local", "bin")

# kube::Api methods → RBAC verb (and subresource).
METHOD_VERBS = {
    "get": ("get", ""),
    "get_opt": ("get", ""),
    "get_metadata": ("get", ""),
    "get_metadata_opt": ("get", ""),
    "list": ("list", ""),
    "list_metadata": ("list", ""),
    "watch": ("watch", ""),
    "watch_metadata": ("watch", ""),
    "create": ("create", ""),
    "replace": ("update", ""),
    "patch": ("patch", ""),
    "patch_metadata": ("patch", ""),
    "delete": ("delete", ""),
    "delete_collection": ("deletecollection", ""),
    "get_status": ("get", "status"),
    "patch_status": ("patch", "status"),
    "replace_status": ("update", "status"),
}
# Methods that only an Api has: a call on an untyped variable named like a kind counts.
API_ONLY = {m for m in METHOD_VERBS if m not in ("get", "list", "watch", "create", "replace", "patch", "delete")}

# k8s_openapi module → API group.
GROUPS = {
    "core": "",
    "coordination": "coordination.k8s.io",
    "admissionregistration": "admissionregistration.k8s.io",
    "authentication": "authentication.k8s.io",
    "authorization": "authorization.k8s.io",
    "events": "events.k8s.io",
    "apps": "apps",
    "batch": "batch",
    "rbac": "rbac.authorization.k8s.io",
    "networking": "networking.k8s.io",
    "policy": "policy",
    "certificates": "certificates.k8s.io",
}
# Resources kept in the operator's namespace only (a Role, not the ClusterRole).
NAMESPACE_ONLY = {("coordination.k8s.io", "leases")}
# Resources restricted to the chart's own objects by name: template variable per resource.
RESOURCE_NAMES = {("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): "webhookConfig"}


def plural(kind: str) -> str:
    low = kind.lower()
    if low.endswith("y"):
        return low[:-1] + "ies"
    if low.endswith("s"):
        return low + "es"
    return low + "s"


def crd_kinds() -> dict[str, tuple[str, str]]:
    kinds = {}
    for path in sorted(glob.glob(os.path.join(CRDS, "*.yaml"))):
        with open(path) as f:
            crd = yaml.safe_load(f)
        names = crd["spec"]["names"]
        kinds[names["kind"]] = (crd["spec"]["group"], names["plural"])
        # The Rust type may spell the kind differently (`ApiKey` for `APIKey`).
        kinds[names["kind"].lower()] = kinds[names["kind"]]
    return kinds


def rust_files():
    for dirpath, dirs, files in os.walk(SRC):
        rel = os.path.relpath(dirpath, SRC)
        if rel.split(os.sep)[0] in SKIP_DIRS:
            continue
        for name in sorted(files):
            if name.endswith(".rs"):
                yield os.path.join(dirpath, name)


def production_code(text: str) -> str:
    """The file without comments and without its test module."""
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod \w+", text, re.M)
    if cut:
        text = text[: cut.start()]
    text = re.sub(r"//[^\n]*", "", text)
    # Join method chains split over lines: `api\n    .patch(` → `api.patch(`.
    return re.sub(r"\s*\n\s*\.", ".", text)


class Collector:
    def __init__(self) -> None:
        self.kinds = {k: v for k, v in crd_kinds().items()}
        self.crd_kinds = set(self.kinds)
        self.needed: dict[tuple[str, str], set[str]] = {}
        self.where: dict[tuple[str, str, str], set[str]] = {}
        self.errors: list[str] = []
        self.generic_kinds: set[str] = set()

    def learn_imports(self, code: str) -> None:
        for module, names in re.findall(r"k8s_openapi::api::(\w+)::\w+::\{?([\w, ]+)\}?", code):
            group = GROUPS.get(module)
            if group is None:
                continue
            for name in re.split(r"[,\s]+", names.strip()):
                if name and name[0].isupper():
                    self.kinds.setdefault(name, (group, plural(name)))

    def add(self, kind: str, verbs, sub: str, where: str) -> None:
        kinds = sorted(self.generic_kinds) if kind == "<generic>" else [kind]
        for k in kinds:
            known = self.kinds.get(k) or self.kinds.get(k.lower())
            if known is None:
                self.errors.append(f"{where}: unknown kind {k}")
                continue
            group, resource = known
            if sub:
                resource = f"{resource}/{sub}"
            for verb in verbs:
                self.needed.setdefault((group, resource), set()).add(verb)
                self.where.setdefault((group, resource, verb), set()).add(where)

    def scan(self) -> None:
        files = [(p, production_code(open(p).read())) for p in rust_files()]
        for _, code in files:
            self.learn_imports(code)
        for _, code in files:
            self.generic_kinds.update(re.findall(r"reconcile::<(\w+)>", code))
        for path, code in files:
            self.scan_file(os.path.relpath(path, ROOT), code)

    def scan_file(self, where: str, code: str) -> None:
        # Bindings of names to kinds, by position: the nearest one before a use wins
        # (the same name is rebound per loop, e.g. `api` for each namespaced kind).
        bindings: list[tuple[int, str, str]] = []
        patterns = [
            r"\blet\s+(?:mut\s+)?(\w+)\s*:\s*Api<(\w+)>",
            r"\blet\s+(?:mut\s+)?(\w+)\s*=\s*Api::<(\w+)>::",
            r"[(,]\s*(\w+)\s*:\s*&?Api<(\w+)>",
            # struct fields: `secrets: Api<Secret>,` (used as `self.secrets.get(…)`)
            r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:\s*Api<(\w+)>",
            # `for (api, secrets) in ….apis::<Source>(…)`: the first is that kind's API.
            r"\bfor\s+\(?\s*(\w+)\s*(?:,\s*\w+\s*)?\)?\s+in\s+[^{]*?::<(\w+)>",
        ]
        for pattern in patterns:
            for m in re.finditer(pattern, code):
                bindings.append((m.start(), m.group(1), m.group(2)))
        # `let api = obj.api(&client)`: the Reconciler's own API (`fn api(..) -> Api<Self>`).
        for m in re.finditer(r"\blet\s+(?:mut\s+)?(\w+)\s*=\s*\w+\.api\(", code):
            bindings.append((m.start(), m.group(1), "Self"))
        bindings.sort()

        def bound(name: str, pos: int) -> str | None:
            kind = None
            for at, n, k in bindings:
                if at > pos:
                    break
                if n == name:
                    kind = k
            return kind

        def kind_of(expr: str, line: str, pos: int) -> str | None:
            expr = expr.strip().lstrip("&").strip()
            # `Api::<K>::all(…)`, or a helper returning one: `api::<K>(&client, scope)`.
            m = re.match(r"Api::<(\w+)>::", expr) or re.match(r"\w+::<(\w+)>\(", expr)
            if m:
                kind = m.group(1)
            else:
                name = re.match(r"(\w+)", expr)
                if not name:
                    return None
                kind = bound(name.group(1), pos)
                if kind is None:
                    kind = {plural(k): k for k in self.kinds}.get(name.group(1))
                if kind is None:
                    self.errors.append(f"{where}: cannot tell the kind of `{expr[:40]}` in `{line.strip()[:80]}`")
                    return None
            return "<generic>" if kind in ("K", "Self") else kind

        # Library entry points that take an Api.
        for m in re.finditer(r"(Controller::new|\.watches|\.owns|\bwatcher|\bmetadata_watcher|\breflector)\(\s*([^,]+)", code):
            kind = kind_of(m.group(2), m.group(0), m.start())
            if kind:
                self.add(kind, ["list", "watch"], "", where)
        for m in re.finditer(r"\bfinalizer\(\s*([^,]+)", code):
            kind = kind_of(m.group(1), m.group(0), m.start())
            if kind:
                self.add(kind, ["patch"], "", where)
        if re.search(r"\bRecorder::new\(", code):
            self.kinds.setdefault("Event", ("events.k8s.io", "events"))
            self.add("Event", ["create", "patch"], "", where)
        if re.search(r"\bLeaseManagerBuilder::new\(", code):
            self.kinds.setdefault("Lease", ("coordination.k8s.io", "leases"))
            self.add("Lease", ["get", "create", "patch"], "", where)

        # Calls on Api values: typed variables, or `Api::<K>::…(…).verb(`.
        for m in re.finditer(r"\b(\w+)((?:\.clone\(\))?)\.(\w+)(?:::<[^>]*>)?\(", code):
            name, method = m.group(1), m.group(3)
            if method not in METHOD_VERBS:
                continue
            kind = bound(name, m.start())
            if kind is None and method in API_ONLY:
                kind = {plural(k): k for k in self.kinds}.get(name)
                if kind is None:
                    self.errors.append(f"{where}: `{name}.{method}(` on an Api of unknown kind")
                    continue
            if kind is None:
                continue
            verb, sub = METHOD_VERBS[method]
            self.add("<generic>" if kind in ("K", "Self") else kind, [verb], sub, where)
        for m in re.finditer(r"Api::<(\w+)>::\w+\([^;]*?\)\.(\w+)\(", code):
            kind, method = m.group(1), m.group(2)
            if method in METHOD_VERBS:
                verb, sub = METHOD_VERBS[method]
                self.add(kind, [verb], sub, where)


def needed() -> tuple[dict[tuple[str, str], set[str]], Collector]:
    c = Collector()
    c.scan()
    if c.errors:
        for e in c.errors:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return c.needed, c


def granted(rendered: str) -> tuple[dict[tuple[str, str], set[str]], list[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    problems = []
    for doc in yaml.safe_load_all(open(rendered)):
        if not doc or doc.get("kind") not in ("ClusterRole", "Role"):
            continue
        labels = doc.get("metadata", {}).get("labels") or {}
        if labels.get("portcullis.io/rbac") == "user-facing":
            continue  # roles for people (aggregated to view/edit), not the operator's
        for rule in doc.get("rules") or []:
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        if "*" in (group, resource, verb):
                            problems.append(f"{doc['kind']} {doc['metadata']['name']}: wildcard {group}/{resource}/{verb}")
                        out.setdefault((group, resource), set()).add(verb)
    return out, problems


def show(perms: dict[tuple[str, str], set[str]]) -> str:
    return "\n".join(f"  {g or 'core'}/{r}: {', '.join(sorted(v))}" for (g, r), v in sorted(perms.items()))


def write_rules(perms: dict[tuple[str, str], set[str]]) -> None:
    rules = {"cluster": [], "namespace": []}
    for (group, resource), verbs in sorted(perms.items()):
        scope = "namespace" if (group, resource.split("/")[0]) in NAMESPACE_ONLY else "cluster"
        names = RESOURCE_NAMES.get((group, resource.split("/")[0]))
        # resourceNames can only narrow verbs that name an object (not create, list, watch).
        named = sorted(v for v in verbs if names and v in ("get", "update", "patch", "delete"))
        rest = sorted(v for v in verbs if v not in named)
        if named:
            rules[scope].append({"apiGroups": [group], "resources": [resource], "resourceNames": names, "verbs": named})
        if rest:
            rules[scope].append({"apiGroups": [group], "resources": [resource], "verbs": rest})
    header = (
        "# Generated by `python3 charts/rbac_check.py write` from the operator's API calls;\n"
        "# charts/test.sh fails when the rendered chart grants less or more. Do not edit.\n"
    )
    with open(RBAC_FILE, "w") as f:
        f.write(header + yaml.safe_dump(rules, sort_keys=False))


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("needed", "write", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    perms, collector = needed()
    if sys.argv[1] == "needed":
        print(show(perms))
        for (g, r, v), places in sorted(collector.where.items()):
            print(f"  {g or 'core'}/{r} {v}: {', '.join(sorted(places))}")
        return 0
    if sys.argv[1] == "write":
        write_rules(perms)
        print(f"wrote {os.path.relpath(RBAC_FILE, ROOT)}:\n{show(perms)}")
        return 0
    have, problems = granted(sys.argv[2])
    less = {k: v - have.get(k, set()) for k, v in perms.items() if v - have.get(k, set())}
    more = {k: v - perms.get(k, set()) for k, v in have.items() if v - perms.get(k, set())}
    print(f"RBAC the operator's code needs:\n{show(perms)}")
    ok = True
    if less:
        print(f"FAIL: the chart grants less than the code calls:\n{show(less)}")
        ok = False
    if more:
        print(f"FAIL: the chart grants more than the code calls:\n{show(more)}")
        ok = False
    for p in problems:
        print(f"FAIL: {p}")
        ok = False
    if ok:
        print("RBAC: the chart grants exactly what the operator calls")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
