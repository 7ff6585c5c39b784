#!/usr/bin/env bash
# Build a STAND-IN for a serving base image (e.g. docker.io/vllm/vllm-openai:v0.33.0) that cannot be pulled
# here: a minimal Debian bookworm rootfs (debootstrap, from the mirror apt already uses) with python3 and
# useradd, plus the `vllm` stand-in script (vllm_standin.py), imported into the engine (podman or docker)
# under the given tag. The generated Dockerfile then builds FROM it unchanged.
# Usage: build_standin.sh IMAGE_REF [ENGINE]   (ENGINE: podman, the default, or docker)
set -euo pipefail
ref="$1"
engine="${2:-podman}"
here="$(cd "$(dirname "$0")" && pwd)"
mirror="$(grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
          | grep -oE 'https?://[^ ]+/debian/?$' | head -n1 || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
work="$(mktemp -d /var/tmp/standin-XXXXXX)"
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include=python3,passwd bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }
install -m 755 "$here/vllm_standin.py" "$work/rootfs/usr/local/bin/vllm"
# The label names the script's version: a stand-in built from an older script is rebuilt (tests/support).
script="$(sha256sum "$here/vllm_standin.py" | cut -c1-12)"
# The test mounts packager's venv and its Python (under /root/.pyenv here) read-only; the image's
# non-root user must be able to reach them.
chmod 755 "$work/rootfs/root"
tar -C "$work/rootfs" -c . | "$engine" import \
  --change 'ENTRYPOINT ["vllm", "serve"]' \
  --change "LABEL dev.packager.stand-in=\"not vLLM: transformers serve on CPU, for tests (script $script)\"" \
  - "$ref" > /dev/null
echo "built stand-in $ref with $engine"
