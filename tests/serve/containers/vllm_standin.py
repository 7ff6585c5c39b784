#!/usr/bin/python3
"""`vllm` inside the STAND-IN base image used by packager's tests. This is NOT vLLM.

vLLM cannot serve without a GPU, and its image cannot be pulled here, so the tests build the generated
vLLM Dockerfile FROM a local stand-in tagged as the pinned vLLM image. This script takes the place of
`vllm serve MODEL --served-model-name NAME --host H --port P ...` and serves the same baked-in model
directory with `transformers serve` (a real OpenAI-compatible server, on CPU) from packager's own venv,
which the test mounts read-only at STANDIN_VENV. Flags that only the vLLM engine understands
(--dtype, --max-model-len, --gpu-memory-utilization, ...) are accepted and ignored here; vLLM's own parser
checks them in a separate test.
"""

import os
import sys


def flag(args, name, default=None):
    return args[args.index(name) + 1] if name in args else default


def main():
    args = sys.argv[1:]
    if not args or args[0] != "serve" or len(args) < 2:
        sys.exit("stand-in vllm: only `vllm serve MODEL [flags]` is supported")
    model, flags = args[1], args[2:]
    name = flag(flags, "--served-model-name", model)
    # `transformers serve` answers only requests whose model equals the path it serves: serve the model
    # directory under its served name, relative to a scratch directory.
    scratch = "/tmp/standin-serve"
    os.makedirs(scratch, exist_ok=True)
    link = os.path.join(scratch, name)
    if not os.path.islink(link):
        os.symlink(model, link)
    os.chdir(scratch)
    venv = os.environ["STANDIN_VENV"]
    port = [a for i, a in enumerate(flags) if i and flags[i - 1] == "--port"][-1:] or ["8000"]
    host = [a for i, a in enumerate(flags) if i and flags[i - 1] == "--host"][-1:] or ["0.0.0.0"]
    print(f"stand-in vllm (NOT vLLM): transformers serve {name} on {host[0]}:{port[0]}", flush=True)
    # float32, as the golden answers were recorded: the weights' bf16 flips near-tie tokens on a CPU (0.892
    # agreement against a 0.9 floor on one machine, 1.0 on another: it depends on the CPU's bf16 kernels)
    os.execv(f"{venv}/bin/transformers", [f"{venv}/bin/transformers", "serve", name, "--host", host[0],
                                          "--port", port[0], "--device", "cpu", "--dtype", "float32"])


if __name__ == "__main__":
    main()
