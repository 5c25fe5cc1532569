#!/usr/bin/env python3
"""Validate custom resources against the CRDs' own schemas, strictly.

  validate_crs.py CRD_DIR FILE_OR_DIR…

Every document whose apiVersion is served by one of the CRDs in CRD_DIR is checked against
that version's openAPIV3Schema, as JSON Schema, with unknown fields refused (the API
server would prune them silently; `kubectl apply --validate=strict` refuses them, and so
do we). Documents of other groups (Secrets, Namespaces) are left to kubernetes-validate.
Also checks itself: a copy of the first resource with an unknown field must be refused.
"""

from __future__ import annotations

import copy
import glob
import os
import sys

import jsonschema
import yaml


def strict(schema: dict) -> dict:
    """The CRD schema as strict JSON Schema: objects with properties refuse other keys."""
    s = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not schema.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = strict(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = strict(s["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            s[key] = [strict(x) for x in s[key]]
    if schema.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable"):
        s.pop("nullable")
        if "type" in s:
            s["type"] = [s["type"], "null"]
    return s


def load_crds(directory: str) -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        with open(path) as f:
            crd = yaml.safe_load(f)
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            # metadata is the API server's; only what a manifest must carry is checked.
            schema.setdefault("properties", {})["metadata"] = {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "maxLength": 253}},
            }
            schema["properties"]["apiVersion"] = {"type": "string"}
            schema["properties"]["kind"] = {"type": "string"}
            schema["additionalProperties"] = False
            schema.setdefault("required", [])
            if "spec" in schema["properties"] and "spec" not in schema["required"]:
                schema["required"] = [*schema["required"], "spec"]
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = schema
    return schemas


def documents(paths: list[str]):
    for p in paths:
        files = sorted(glob.glob(os.path.join(p, "*.yaml"))) if os.path.isdir(p) else [p]
        for f in files:
            with open(f) as fh:
                for doc in yaml.safe_load_all(fh):
                    if doc:
                        yield f, doc


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = load_crds(sys.argv[1])
    groups = {gv for gv, _ in schemas}
    checked = failed = 0
    first = None
    for path, doc in documents(sys.argv[2:]):
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key[0] not in groups:
            continue
        name = f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if key not in schemas:
            print(f"FAIL {name}: no CRD serves {key[1]} in {key[0]}")
            failed += 1
            continue
        errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(doc), key=str)
        checked += 1
        if errors:
            failed += 1
            for e in errors:
                print(f"FAIL {name}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
        else:
            print(f"ok   {name}")
            first = first or (key, doc)
    if first:
        key, doc = first
        typo = copy.deepcopy(doc)
        typo.setdefault("spec", {})["unknownFieldTypo"] = True
        if not list(jsonschema.Draft7Validator(schemas[key]).iter_errors(typo)):
            print("FAIL self-check: a resource with an unknown field was accepted")
            failed += 1
    print(f"custom resources: {checked} checked against the CRDs, {failed} failed")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
