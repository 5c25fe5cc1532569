#!/usr/bin/env bash
# The chart's tests (CI runs this): helm lint and helm template (Helm's own library,
# helm-sdkpy) with default values, with every option on and with SQLite; every rendered
# document validated strictly against the schemas of a current Kubernetes release
# (kubernetes-validate) and the example custom resources against our CRDs; values that
# must be refused; RBAC against the operator's API calls; promtool check + unit tests of
# every alert; and the live test: Prometheus scraping a running operator and sidecar under
# traffic, every dashboard query returning data.
#
#   charts/test.sh              all of it
#   SKIP_LIVE=1 charts/test.sh  all but the live test (no cargo build)
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=$(mktemp -d /tmp/portcullis-chart.XXXXXX)
chart=charts/portcullis
passed=0 failed=0
step() { printf '\n=== chart: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
check() { # name, command...
  local name=$1; shift
  local t0=$SECONDS
  if "$@"; then
    echo "PASS $name ($((SECONDS - t0)) s)"; passed=$((passed + 1))
  else
    echo "FAIL $name ($((SECONDS - t0)) s)"; failed=$((failed + 1))
  fi
}
refused() { # name, expected message, helm_render args...: rendering must fail, saying why
  local want=$1; shift
  local log; log=$(python3 charts/helm_render.py template "$chart" "$out/refused.yaml" "$@" 2>&1)
  if [[ $? -ne 0 ]] && grep -q -- "$want" <<<"$log"; then
    echo "refused as expected: $(grep -o -- "$want.\{0,60\}" <<<"$log" | head -1)"
  else
    echo "not refused as expected ($want):"; echo "$log" | tail -5; return 1
  fi
}

step "tools"
python3 -c 'import helm_sdkpy' 2>/dev/null || pip install -q --ignore-requires-python helm-sdkpy
command -v kubernetes-validate >/dev/null || pip install -q kubernetes-validate
python3 -c 'import jsonschema, yaml' 2>/dev/null || pip install -q jsonschema pyyaml
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
python3 -c 'import helm_sdkpy; print("helm-sdkpy", helm_sdkpy.get_version())'
kubernetes-validate --version
promtool --version | head -1

step "CRDs in the chart are crds/ (generated from operator/src/crd)"
check "chart CRDs match crds/" diff -r crds "$chart/files/crds"

step "helm lint"
check "helm lint (default values)" python3 charts/helm_render.py lint "$chart"
check "helm lint (every option on)" python3 charts/helm_render.py lint "$chart" charts/tests/values-all.yaml
check "helm lint (SQLite, one replica)" python3 charts/helm_render.py lint "$chart" charts/tests/values-sqlite.yaml

step "helm template"
check "helm template (default values)" python3 charts/helm_render.py template "$chart" "$out/default.yaml"
check "helm template (every option on)" python3 charts/helm_render.py template "$chart" "$out/all.yaml" charts/tests/values-all.yaml
check "helm template (SQLite, one replica)" python3 charts/helm_render.py template "$chart" "$out/sqlite.yaml" charts/tests/values-sqlite.yaml
check "helm template (Tiltfile's values)" python3 charts/helm_render.py template "$chart" "$out/dev.yaml" charts/examples/values-dev.yaml
check "NOTES tell how to read the admin password and inject a pod" \
  grep -q "portcullis-initial-admin" "$out/default.yaml.notes"
check "NOTES show the injection annotation" grep -q "portcullis.io/inject" "$out/default.yaml.notes"

step "values that must be refused"
printf 'webhok:\n  enabled: false\n' >"$out/typo.yaml"
check "a typo in values fails at install" refused "webhok" "$out/typo.yaml"
printf 'database:\n  type: sqlite\nreplicaCount: 2\n' >"$out/sqlite2.yaml"
check "SQLite with two replicas is refused" refused "allows one replica" "$out/sqlite2.yaml"
printf 'webhook:\n  failurePolicy: Sometimes\n' >"$out/policy.yaml"
check "an unknown failure policy is refused" refused "failurePolicy" "$out/policy.yaml"

step "Kubernetes schemas (kubernetes-validate, strict)"
for f in default all sqlite dev; do
  check "rendered $f: every document valid" python3 charts/k8s_validate.py "$out/$f.yaml"
done
check "examples/: Namespaces and Secrets valid" python3 charts/k8s_validate.py examples/*.yaml
check "examples/ custom resources valid against the CRDs (strict)" python3 charts/validate_crs.py crds examples

step "RBAC: the chart grants exactly what the operator's code calls"
check "RBAC (default values)" python3 charts/rbac_check.py check "$out/default.yaml"
check "RBAC (every option on)" python3 charts/rbac_check.py check "$out/all.yaml"

step "alerts (promtool)"
mkdir -p "$out/prom"
python3 - "$out/all.yaml" "$out/prom/rules.yaml" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "PrometheusRule":
        yaml.safe_dump({"groups": d["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
PY
cp charts/tests/alerts_test.yaml "$out/prom/"
check "promtool check rules" promtool check rules "$out/prom/rules.yaml"
check "promtool test rules (every alert firing and not firing)" promtool test rules "$out/prom/alerts_test.yaml"

if [[ -z ${SKIP_LIVE:-} ]]; then
  step "live: Prometheus scraping an operator and a sidecar under traffic"
  check "every dashboard query returns data" python3 charts/live_metrics.py "$out/all.yaml"
fi

rm -rf "$out"
echo
echo "charts: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
