"""Modelfiles and values whose reading by Ollama's parser matters: read by packager's model of that parser
(tests/serve/test_modelfile.py) and by Ollama's own binary (tests/serve/test_ollama_itself.py)."""

from __future__ import annotations

from pathlib import Path

# What Ollama's parser makes of each (parser/parser.go): quotes stripped, never unescaped; runs on over spaces
# and unclosed quotes; non-printable characters deleted; comments and any command case.
READ_AS_OLLAMA_DOES = [
    ('FROM ./m.gguf\nPARAMETER stop "\\""\n', [("model", "./m.gguf"), ("stop", '\\"')]),
    ('FROM ./m.gguf\nPARAMETER stop "<|im_end|>"\n', [("model", "./m.gguf"), ("stop", "<|im_end|>")]),
    ("FROM ./m.gguf\nPARAMETER stop <|im_end|> <|eot_id|>\n", [("model", "./m.gguf"), ("stop", "<|im_end|> <|eot_id|>")]),
    ('FROM ./m.gguf\nSYSTEM "two\nlines"\n', [("model", "./m.gguf"), ("system", "two\nlines")]),
    ('FROM ./m.gguf\nTEMPLATE """a\u00a0b\u200bc\x1bd"""', [("model", "./m.gguf"), ("template", "abcd")]),
    ('FROM ./m.gguf\nTEMPLATE """  {{ .Prompt }}\t\n  """\n', [("model", "./m.gguf"), ("template", "  {{ .Prompt }}\t\n  ")]),
    ('# a comment\nfrom ./m.gguf\n\n  parameter num_ctx 4096\n', [("model", "./m.gguf"), ("num_ctx", "4096")]),
    ('FROM ./m.gguf\nMESSAGE user hi there\n', [("model", "./m.gguf"), ("message", "user: hi there")]),
    ('FROM ./m.gguf\nLICENSE """x""" y"""\n', [("model", "./m.gguf"), ("license", 'x""" y')]),
]


NASTY = ['"', "\\", '\\"', 'a"b', '"quoted"', "end\"", '"start', " lead", "trail ", "\ttab", "two\nlines", "",
         '"""', 'x"""y', "<|im_end|>", "</s>", "<end_of_turn>", "\n\n", "{{ .Prompt }}", "#not a comment", "ü→🙂"]


def write_tiny_gguf(path: Path) -> Path:
    """The smallest GGUF `ollama create` takes: a one-layer Llama header, a 16-token vocabulary, one tensor."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>", *(f"t{i}" for i in range(13))]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([1] * len(tokens))
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def blob_cleanup_script() -> str:
    """The lines of packager's Ollama Dockerfile that remove every blob no manifest names (after `ollama
    create`), as a bash script over $OLLAMA_MODELS."""
    import packager.templates

    dockerfile = Path(packager.templates.__file__).parent / "containers" / "ollama.Dockerfile.j2"
    lines = dockerfile.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith('named="$('))
    end = next(i for i in range(start, len(lines)) if 'rm -f "$blob" ;; esac; done' in lines[i])
    return " ".join(line.rstrip().removesuffix("\\").strip() for line in lines[start:end + 1])  # as Docker joins them
