"""The reliability tests' fixtures, built in reliability_kit (whose helpers the test modules import)."""

from reliability_kit import http_server, run_copy, tiny_gguf_run, tiny_run  # noqa: F401 (fixtures)
