#!/usr/bin/env bash
# Installs what Shoal's build, tests and demo need on Debian 12: Debian's OCI registry
# (docker-registry), curl, iproute2 and nftables (the multi-host tests run members in network
# namespaces and cut them off with nftables) when missing, and the rustup targets for the Wasm
# guests, and a virtualenv with the Kubernetes Python client.
# Idempotent and quiet when all is already there. kubectl 1.32 is expected at /usr/bin/kubectl.
set -euo pipefail

if ! command -v kubectl >/dev/null 2>&1; then
    echo "error: kubectl (1.32 or newer) is required on PATH; Debian's kubernetes-client is too old" >&2
    exit 1
fi

need_apt=()
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
if [ "${#need_apt[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

installed="$(rustup target list --installed)"
for target in wasm32-wasip1 wasm32-wasip2; do
    grep -qx "$target" <<<"$installed" || rustup target add "$target"
done
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

# The official Kubernetes Python client for tests/e2e/tests/python_client.rs, in a virtualenv
# of its own (PyPI).
pyenv_dir="$(dirname "$0")/../target/pyenv"
if [ ! -x "$pyenv_dir/bin/python" ] || ! "$pyenv_dir/bin/python" -c 'import kubernetes' 2>/dev/null; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$pyenv_dir"
    "$pyenv_dir/bin/pip" install -q 'kubernetes>=31,<35'
fi
