#!/usr/bin/env python3
"""Every document of a rendered chart (or manifest files) validated strictly against the
Kubernetes schemas of a current release (PyPI `kubernetes-validate`): unknown fields are
errors. Kinds from other projects' CRDs (prometheus-operator, cert-manager) have no schema
there: they are listed, not passed silently; our own custom resources are validated
against our CRDs by validate_crs.py.

  k8s_validate.py FILE…
"""

from __future__ import annotations

import sys

import kubernetes_validate
import yaml

THIRD_PARTY = {"monitoring.coreos.com", "cert-manager.io"}
OURS = {"portcullis.io"}


def main() -> int:
    version = kubernetes_validate.latest_version()
    valid = failed = elsewhere = 0
    for path in sys.argv[1:]:
        for doc in yaml.safe_load_all(open(path)):
            if not doc:
                continue
            name = f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            group = doc.get("apiVersion", "").split("/")[0] if "/" in doc.get("apiVersion", "") else ""
            if group in THIRD_PARTY | OURS:
                elsewhere += 1
                where = "validate_crs.py" if group in OURS else "no schema in kubernetes-validate (rules: promtool)"
                print(f"skip {name}: {group} ({where})")
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                valid += 1
            except kubernetes_validate.ValidationError as e:
                failed += 1
                print(f"FAIL {name}: {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                failed += 1
                print(f"FAIL {name}: no schema: {e}")
    print(f"Kubernetes {version} schemas (strict): {valid} valid, {failed} invalid, {elsewhere} of other groups")
    return 1 if failed or not valid else 0


if __name__ == "__main__":
    sys.exit(main())
