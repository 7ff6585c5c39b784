"""llama.cpp's own server, ``llama-server``, as a third engine for the chat template.

A GGUF carries its chat template as Jinja text (``tokenizer.chat_template``), and whoever serves the file renders
it: llama.cpp's ``llama-server`` with its own Jinja engine (``common/jinja``, not Python's), LM Studio and the
Ollama releases that run GGUF models on llama-server. Its ``POST /apply-template`` returns the prompt a chat
request becomes, without generating (tools/server/server-context.cpp ``post_apply_template``: the request goes
through ``oaicompat_chat_params_parse`` exactly as ``/v1/chat/completions`` would). So the GGUF's template is
checked as llama.cpp itself renders it, against transformers' rendering, on the parity conversations.

The binary is built by ``make setup`` from the llama.cpp that llama-cpp-python vendors (the same version that
wrote and quantized the GGUF); ``PACKAGER_LLAMA_SERVER`` names another one.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from packager.errors import DependencyMissingError, StageError
from packager.models.chat_template import ChatTemplate
from packager.process import ChildProcess, run_command
from packager.serve.parity import first_difference, jinja_prompt

LLAMA_SERVER_ENV = "PACKAGER_LLAMA_SERVER"
LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python whose vendored llama.cpp `make setup` builds llama-server from
READY_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 60
GENERATE_TIMEOUT_S = 600  # a prompt with tools and a call on a busy CPU (two cores shared with a trainer)


def llama_server_binary() -> Path | None:
    """``PACKAGER_LLAMA_SERVER``, else the one ``make setup`` builds into packager's cache, else ``llama-server``
    on PATH; None when there is none."""
    if os.environ.get(LLAMA_SERVER_ENV):
        named = Path(os.environ[LLAMA_SERVER_ENV])
        if not (named.is_file() and os.access(named, os.X_OK)):
            raise DependencyMissingError("llama-server", f"to render chat templates ({LLAMA_SERVER_ENV} names {named}, "
                                         "which is not an executable file)", install="make setup")
        return named
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    built = cache / "packager" / f"llama-server-{LLAMA_CPP_PYTHON}-avx2" / "bin" / "llama-server"
    if built.is_file():
        return built
    found = shutil.which("llama-server")
    return Path(found) if found else None


def llama_server_version(binary: Path) -> str:
    """What ``llama-server --version`` says (``version: N (commit)``, then the compiler)."""
    result = run_command([str(binary), "--version"], timeout_s=30, what="llama-server")
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("version:")), lines[0] if lines else "unknown")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemplateRefused(StageError):
    """llama-server answered 400: its template engine raised on the conversation (``raise_exception`` in the
    template, as transformers would) or refused the request."""


def _post(url: str, body: dict, *, timeout: float = REQUEST_TIMEOUT_S) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        kind = TemplateRefused if exc.code == 400 else StageError
        raise kind("llama.cpp template", f"llama-server refused {url}: HTTP {exc.code} {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise StageError("llama.cpp template", f"llama-server did not answer {url} within {timeout:.0f} s: {exc}",
                         hint="the machine may be busy; run the stage again") from None


class LlamaServer:
    """``with LlamaServer(gguf) as server: server.apply_template(messages)``: llama-server on 127.0.0.1 with the
    GGUF loaded (by default one thread and a small context: enough to render), stopped when the block ends."""

    def __init__(self, gguf: Path, *, binary: Path | None = None, ctx_size: int = 512, threads: int = 1):
        self.gguf = Path(gguf)
        self.binary = binary or llama_server_binary()
        if self.binary is None:
            raise DependencyMissingError("llama-server", "to render chat templates with llama.cpp's own engine",
                                         install=f"make setup (or set {LLAMA_SERVER_ENV})")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        # --jinja: the GGUF's own template through llama.cpp's Jinja engine (not a built-in format it guesses)
        self._child = ChildProcess([str(self.binary), "--model", str(self.gguf), "--host", "127.0.0.1",
                                    "--port", str(self.port), "--ctx-size", str(ctx_size), "--threads", str(threads),
                                    "--jinja",
                                    "--no-webui", "--no-warmup", "--offline"], log=self._log)

    def __enter__(self) -> LlamaServer:
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._child.stop()
        self._log.close()

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def _wait_ready(self) -> None:
        started = time.monotonic()
        while time.monotonic() - started < READY_TIMEOUT_S:
            if self._child.poll() is not None:
                raise StageError("llama.cpp template", f"llama-server exited ({self._child.returncode}) loading "
                                                       f"{self.gguf.name}:\n{self._output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise StageError("llama.cpp template", f"llama-server was not ready after {READY_TIMEOUT_S} s:\n"
                                               f"{self._output()}")

    def added_specials(self) -> tuple[str, str]:
        """The BOS and EOS text llama.cpp adds itself when it tokenizes a prompt ("" for none), read off its own
        tokenizer (``/tokenize`` with and without ``add_special``) and ``/props``."""
        def tokens(add_special: bool) -> list[int]:
            return _post(f"{self.url}/tokenize", {"content": "x", "add_special": add_special})["tokens"]

        plain, special = tokens(False), tokens(True)
        with urllib.request.urlopen(f"{self.url}/props", timeout=REQUEST_TIMEOUT_S) as response:
            props = json.loads(response.read())
        return (props.get("bos_token", "") if special[:1] != plain[:1] else "",
                props.get("eos_token", "") if special[-1:] != plain[-1:] else "")

    def apply_template(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The prompt llama-server makes of a chat request: with the generation prompt after a user turn; a
        final assistant turn is continued (its ``--prefill-assistant`` default)."""
        return _post(f"{self.url}/apply-template", {"messages": messages, **({"tools": tools} if tools else {})}
                     )["prompt"]

    def complete(self, prompt: str, max_tokens: int) -> str:
        """The greedy continuation of a raw prompt, as the model writes it (special tokens as text)."""
        return _post(f"{self.url}/completion", {"prompt": prompt, "n_predict": max_tokens, "temperature": 0,
                                                "cache_prompt": False}, timeout=GENERATE_TIMEOUT_S)["content"]

    def chat(self, messages: list[dict], max_tokens: int, tools: list[dict] | None = None) -> dict:
        """A greedy OpenAI chat completion: the first choice (its message and finish_reason)."""
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "cache_prompt": False}
        if tools:
            body.update({"tools": tools, "tool_choice": "auto", "parallel_tool_calls": True})
        return _post(f"{self.url}/v1/chat/completions", body, timeout=GENERATE_TIMEOUT_S)["choices"][0]


def check_llama_cpp_template(gguf: Path, template: ChatTemplate, conversations: list[list[dict]], *,
                             binary: Path | None = None) -> dict:
    """Render ``conversations`` with llama.cpp's own engine from the GGUF's embedded template and compare each with
    transformers' rendering of ``template`` (what the model was trained on). A conversation both refuse (the
    template raises) agrees. A prefilled request (a final assistant turn) that llama.cpp renders differently is
    recorded as a caveat: llama.cpp builds that prompt itself from two renders (common/chat-auto-parser-generator
    .cpp), and an ordinary request never takes that path.

    Raises:
        StageError: a conversation renders differently; the message names it and where.
        DependencyMissingError: there is no llama-server.
    """
    refused_by_both, caveats = [], []
    with LlamaServer(gguf, binary=binary) as server:
        added = server.added_specials()
        for n, messages in enumerate(conversations, 1):
            try:
                got = server.apply_template(messages)
            except TemplateRefused:
                got = None
            # llama.cpp's strftime_now reads the clock: Jinja is told the same day (either side of a midnight)
            wants = [_reference(template, messages, day, added)
                     for day in (datetime.date.today(), datetime.date.today() - datetime.timedelta(days=1))]
            if got in wants:
                if got is None:
                    refused_by_both.append(n)
                continue
            difference = (first_difference(wants[0], got, theirs="llama.cpp") if None not in (got, wants[0]) else
                          "transformers raises on it" if got is not None else "llama-server refuses it")
            if messages[-1]["role"] == "assistant":
                caveats.append(f"llama-server renders a prefilled request (conversation {n}) differently: "
                               f"{difference}")
                continue
            raise StageError("llama.cpp template",
                             f"llama.cpp's template engine renders conversation {n} from {gguf.name} differently "
                             f"from transformers: {difference}",
                             hint="llama-server, LM Studio and Ollama's llama-server runner would prompt the model "
                                  "differently from training; serve it with a template file (llama-server "
                                  "--chat-template-file) or report the construct to llama.cpp")
        return {"conversations": len(conversations), "refused_by_both": refused_by_both, "caveats": caveats,
                "engine": llama_server_version(server.binary),
                "checked_with": "llama-server POST /apply-template (llama.cpp's own Jinja engine)"}


def _reference(template: ChatTemplate, messages: list[dict], today: datetime.date,
               added: tuple[str, str]) -> str | None:
    """transformers' prompt for the request, None where the template raises. llama.cpp drops the BOS text a template
    writes first, and the EOS text it writes last, when its tokenizer adds that token itself (``added``; common/
    chat.cpp ``common_chat_template_direct_apply_impl``), so the tokens are the same: the reference does too."""
    try:
        text = jinja_prompt(template, messages, today=today)
    except Exception:  # noqa: BLE001 - jinja2's TemplateError, raise_exception() in the template
        return None
    bos, eos = added
    text = text[len(bos):] if bos and text.startswith(bos) else text
    return text[: len(text) - len(eos)] if eos and text.endswith(eos) else text
