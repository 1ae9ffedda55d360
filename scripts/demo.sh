#!/usr/bin/env bash
# One command from a fresh clone to a one-node Shoal cluster running examples/hello:
# installs what it needs, builds `shoal` (release) and the guest, starts a local OCI registry
# and `shoal up`, pushes the guest, applies the Deployment with kubectl, waits for the rollout
# and shows the pods and their output. The cluster keeps running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DATA="${SHOAL_DEMO_DIR:-$ROOT/.shoal-demo}"
REGISTRY_PORT="${REGISTRY_PORT:-5000}"
API="${SHOAL_LISTEN:-127.0.0.1:6443}"

scripts/install-deps.sh
echo "==> building shoal (release) and the hello guest"
cargo build --release -p shoal-cli --bin shoal
CARGO_TARGET_DIR="$ROOT/target/guests" cargo build --release --target wasm32-wasip2 \
    --manifest-path examples/hello/Cargo.toml
SHOAL="$ROOT/target/release/shoal"
WASM="$ROOT/target/guests/wasm32-wasip2/release/hello.wasm"

mkdir -p "$DATA/registry"
cat >"$DATA/registry.yml" <<YAML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $DATA/registry
http:
  addr: 127.0.0.1:$REGISTRY_PORT
YAML
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

echo "==> starting docker-registry on 127.0.0.1:$REGISTRY_PORT"
docker-registry serve "$DATA/registry.yml" >"$DATA/registry.log" 2>&1 &
pids+=($!)
echo "==> starting shoal up (API on https://$API, data in $DATA)"
"$SHOAL" up --data-dir "$DATA" --listen "$API" >"$DATA/shoal.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
    [ -f "$DATA/kubeconfig" ] && curl -fsS --cacert "$DATA/pki/ca.crt" "https://$API/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
export KUBECONFIG="$DATA/kubeconfig"
kubectl wait --for=condition=Ready node --all --timeout=60s >/dev/null

echo "==> shoal push $WASM 127.0.0.1:$REGISTRY_PORT/hello:v1"
"$SHOAL" push "$WASM" "127.0.0.1:$REGISTRY_PORT/hello:v1"
echo "==> kubectl apply -f examples/hello/deployment.yaml"
sed "s#127.0.0.1:5000/#127.0.0.1:$REGISTRY_PORT/#" examples/hello/deployment.yaml | kubectl apply -f -
kubectl rollout status deployment/hello --timeout=120s
kubectl get pods -o wide
pod="$(kubectl get pods -l app=hello -o jsonpath='{.items[0].metadata.name}')"
sleep 1
echo "==> kubectl logs $pod"
kubectl logs "$pod"
echo
echo "Shoal is running. In another shell: export KUBECONFIG=$DATA/kubeconfig; kubectl get pods"
echo "Press Ctrl-C to stop."
wait
