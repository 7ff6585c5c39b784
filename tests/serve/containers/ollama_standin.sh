#!/bin/bash
# A STAND-IN for the `ollama` command of the pinned ollama/ollama image, which cannot be pulled here (NOT Ollama).
# It does what packager's Ollama Dockerfile relies on, as Ollama does it: `serve` writes the identity key pair
# ~/.ollama/id_ed25519 on its first start (Ollama's server initializes its key pair there) and runs until
# killed; `list` answers once a server runs; `create NAME -f Modelfile` reads the Modelfile and stores it with
# its FROM file under $OLLAMA_MODELS. Generation is not its business (tests/serve uses llama.cpp's server).
set -euo pipefail
models="${OLLAMA_MODELS:-$HOME/.ollama/models}"
case "${1:-}" in
  serve)
    mkdir -p "$HOME/.ollama"
    [ -f "$HOME/.ollama/id_ed25519" ] || {
      printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\nstand-in-identity-%s\n-----END OPENSSH PRIVATE KEY-----\n' \
        "$RANDOM$RANDOM" > "$HOME/.ollama/id_ed25519"
      chmod 600 "$HOME/.ollama/id_ed25519"
      echo "ssh-ed25519 stand-in" > "$HOME/.ollama/id_ed25519.pub"
    }
    touch /tmp/ollama-standin.serving
    exec sleep infinity ;;
  list)
    [ -f /tmp/ollama-standin.serving ] && echo "NAME ID SIZE MODIFIED" ;;
  create)
    name="$2"; [ "$3" = "-f" ] || { echo "usage: ollama create NAME -f Modelfile" >&2; exit 2; }
    modelfile="$4"; dir="$(dirname "$modelfile")"
    from="$(sed -n 's/^FROM \(.*\)$/\1/p' "$modelfile" | head -n1)"
    [ -f "$dir/$from" ] || { echo "Error: FROM $from: no such file" >&2; exit 1; }
    mkdir -p "$models/$name"
    cp "$modelfile" "$models/$name/Modelfile"
    cp "$dir/$from" "$models/$name/"
    echo "success" ;;
  *) echo "ollama stand-in: $* is not implemented" >&2; exit 1 ;;
esac
