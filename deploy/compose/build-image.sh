#!/usr/bin/env bash
# Builds the local image `shoal:local` FROM scratch: the release `shoal` binary and Debian's
# `docker-registry` (for the example's registry service), each with the shared libraries it
# links, and nothing else. No registry pull is involved.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
scripts/install-deps.sh
cargo build --release -p shoal-cli --bin shoal
STAGE="$ROOT/target/image"
rm -rf "$STAGE"
mkdir -p "$STAGE/tmp" "$STAGE/etc"
copy_with_libs() {
    local bin="$1" name="$2"
    cp "$bin" "$STAGE/$name"
    # The dynamic loader and every library the binary needs, at their own paths.
    ldd "$bin" | awk '/=> \//{print $3} /^\t\//{print $1}' | while read -r lib; do
        mkdir -p "$STAGE$(dirname "$lib")"
        cp -L "$lib" "$STAGE$lib"
    done
}
copy_with_libs "$ROOT/target/release/shoal" shoal
copy_with_libs "$(command -v docker-registry)" docker-registry
# Trust roots for registries over HTTPS (the agent's pulls); a scratch image has none.
mkdir -p "$STAGE/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$STAGE/etc/ssl/certs/ca-certificates.crt"
cat >"$STAGE/etc/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /tmp/registry
http:
  addr: 0.0.0.0:5000
YAML
cat >"$STAGE/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY . /
ENTRYPOINT ["/shoal"]
DOCKERFILE
docker build -q -t shoal:local "$STAGE"
echo "built shoal:local"
