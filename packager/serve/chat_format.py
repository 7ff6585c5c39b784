"""The model's Jinja chat template as an Ollama TEMPLATE (Go text/template), proven equal on conversations.

Ollama never runs Jinja: without an explicit TEMPLATE it guesses one of its
built-ins, or falls back to ``{{ .Prompt }}``, and a fine-tune then never stops
[ollama 10222, 8363]. Translating arbitrary Jinja to Go is not possible, so
packager *infers* the turn structure by rendering the Jinja template with
marker contents: a prefix and suffix per role, a default system turn the
template adds when none is given, and the generation prompt. From that it
writes the Go template, and then checks, on a set of conversations, that

    Jinja (as transformers renders it) == packager's model of the format == the TEMPLATE as Ollama executes it

the last one, when Go is installed, with a model of Ollama's template execution over Go's own text/template
(messages collated, a map for data, its functions; see :func:`render_as_ollama`).
A template whose output the inference cannot reproduce is refused, naming the conversation
that differs, rather than shipped wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from packager.errors import StageError
from packager.models.chat_template import ChatTemplate
from packager.serve.go_template import go_available, render_as_ollama
from packager.serve.modelfile import go_printable, go_string_constant


ROLES = ("system", "user", "assistant")
_MARK = {"system": "\x02PKGSYS{}\x03", "user": "\x02PKGUSR{}\x03", "assistant": "\x02PKGAST{}\x03"}

# Conversations the Go template must render exactly as Jinja does: single and multi-turn, with and without a
# system turn, and contents that stress quoting (newlines, quotes, braces, Go and Jinja delimiters, unicode).
PARITY_CONVERSATIONS: list[list[dict]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Ticket: printer on floor 3 is jammed.\nPlease help!"},
     {"role": "assistant", "content": '{"category": "hardware", "priority": "low"}'},
     {"role": "user", "content": "And the summary?"}],
    [{"role": "system", "content": "Reply with JSON: category, priority, summary."},
     {"role": "user", "content": 'Quote: "it {{ broke }}" {% twice %} — naïve café ☕'},
     {"role": "assistant", "content": "{\n  \"category\": \"other\"\n}"},
     {"role": "user", "content": "Again, with `code` and \\ backslashes."}],
]


@dataclass(frozen=True)
class ChatFormat:
    """A chat template reduced to its turn structure."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation_prompt: str
    default_system: str | None  # content of the system turn the template adds when there is none
    start: str = ""  # written once before the first turn (the BOS text, when the tokenizer does not add BOS)
    leading_bos: str = ""  # BOS text Jinja writes first that llama.cpp adds itself, so Go must not [doubled BOS]

    def render(self, messages: list[dict]) -> str:
        """What the Go template renders for ``messages`` (a conversation ending in a user turn)."""
        out = [self.start]
        if self.default_system is not None and messages[0]["role"] != "system":
            out.append(self.prefix["system"] + self.default_system + self.suffix["system"])
        for i, message in enumerate(messages):
            last = i == len(messages) - 1
            role = message["role"]
            out.append(self.prefix[role] + message["content"])
            if not (last and role == "assistant"):
                out.append(self.suffix[role])
            if last and role != "assistant":
                out.append(self.generation_prompt)
        return "".join(out)

    def go_template(self) -> str:
        """The Ollama TEMPLATE: Go text/template over ``.Messages`` (``.Role``, ``.Content``)."""
        lines = [_go_text(self.start)] if self.start else []
        if self.default_system is not None:
            lines.append('{{- if and .Messages (ne (index .Messages 0).Role "system") }}'
                         + _go_text(self.prefix["system"] + self.default_system + self.suffix["system"])
                         + "{{ end }}")
        lines.append("{{- range $i, $m := .Messages }}")
        lines.append("{{- $last := eq (len (slice $.Messages $i)) 1 }}")
        for n, role in enumerate(ROLES):
            keyword = "if" if n == 0 else "else if"
            suffix = _go_text(self.suffix[role])
            if role == "assistant":
                suffix = "{{ if not $last }}" + suffix + "{{ end }}" if suffix else ""
            lines.append(f'{{{{- {keyword} eq .Role "{role}" }}}}' + _go_text(self.prefix[role])
                         + "{{ .Content }}" + suffix)
        lines.append("{{- end }}")
        lines.append('{{- if and $last (ne .Role "assistant") }}' + _go_text(self.generation_prompt) + "{{ end }}")
        lines.append("{{- end }}")
        return "\n".join(lines)


def _go_text(text: str) -> str:
    """Literal text for a Go template: raw where that is safe, else a Go string constant.

    Quoted when it contains an action delimiter, ends in whitespace that the next line's ``{{-`` would trim, or
    holds a character that Ollama's Modelfile parser would delete (a no-break space, a zero-width space: the
    constant spells it as an escape).
    """
    hidden = not all(go_printable(c) or c in "\n\t" for c in text)
    if "{{" in text or "}}" in text or text != text.rstrip() or hidden:
        return "{{ " + go_string_constant(text) + " }}"
    return text


def _split(rendered: str, marks: list[str], what: str) -> list[str]:
    """The text between the marker contents, in order: len(marks) + 1 pieces."""
    pieces, rest = [], rendered
    for mark in marks:
        if rest.count(mark) != 1:
            raise _cannot(f"{what}: the template does not write each message's content exactly once")
        before, rest = rest.split(mark)
        pieces.append(before)
    return pieces + [rest]


def _cannot(reason: str) -> StageError:
    return StageError("ollama template", f"cannot express this chat template as an Ollama TEMPLATE: {reason}",
                      hint="write the Go template yourself and set containers.ollama.template: FILE in "
                           "packager.yaml; packager checks it against the Jinja template")


def infer_chat_format(template: ChatTemplate) -> ChatFormat:
    """Read the turn structure off renders with marker contents (see the module docstring)."""
    s, u1, a1, u2 = _MARK["system"].format(1), _MARK["user"].format(1), _MARK["assistant"].format(1), \
        _MARK["user"].format(2)
    msg = lambda role, content: {"role": role, "content": content}  # noqa: E731
    try:
        full = template.render([msg("system", s), msg("user", u1), msg("assistant", a1), msg("user", u2),
                                msg("assistant", _MARK["assistant"].format(2))], add_generation_prompt=False)
        with_system = template.render([msg("system", s), msg("user", u1)], add_generation_prompt=False)
        user_only = template.render([msg("user", u1)], add_generation_prompt=False)
        user_gen = template.render([msg("user", u1)], add_generation_prompt=True)
    except Exception as exc:  # jinja2 errors, raise_exception() in the template
        raise _cannot(f"rendering it failed: {exc}") from None
    pieces = (_split(full, [s, u1, a1, u2, _MARK["assistant"].format(2)], "a five-turn conversation"),
              _split(with_system, [s, u1], "a system and a user turn"), _split(user_only, [u1], "a single user turn"),
              user_only, user_gen)
    # BOS text at the start of every conversation is either part of the first turn (ChatML whose BOS is
    # <|im_start|>) or written once before it (Llama 3); try both, the likelier first.
    bos = template.bos_token
    candidates = [""]
    if bos and all(r.startswith(bos) for r in (full, with_system, user_only)):
        candidates = [bos, ""] if template.adds_bos else ["", bos]
    for n, start in enumerate(candidates):
        try:
            return _structure(*pieces, start=start, adds_bos=template.adds_bos)
        except StageError:
            if n == len(candidates) - 1:
                raise


def _structure(full: list[str], with_system: list[str], user_only: list[str], user_only_text: str, user_gen: str,
               *, start: str, adds_bos: bool) -> ChatFormat:
    p0, p1, p2, p3, p4, p5 = full
    _, e1, e2 = with_system
    d0 = user_only[0]
    if not (p0.startswith(start) and d0.startswith(start)):
        raise _cannot("conversations do not all start the same way")
    p0, d0 = p0[len(start):], d0[len(start):]
    suffix = {"assistant": p5, "user": e2}
    if not p3.startswith(suffix["assistant"]):
        raise _cannot("the text after an assistant turn differs between the middle and the end of a conversation")
    prefix = {"system": p0, "user": p3[len(suffix["assistant"]):]}
    if not p2.startswith(suffix["user"]) or p4 != p2:
        raise _cannot("user turns are not written the same way each time")
    prefix["assistant"] = p2[len(suffix["user"]):]
    if not e1.endswith(prefix["user"]) or p1 != e1:
        raise _cannot("the system turn is not followed by the usual user turn")
    suffix["system"] = e1[: len(e1) - len(prefix["user"])]
    if not user_gen.startswith(user_only_text):
        raise _cannot("the generation prompt is not appended after the conversation")
    generation_prompt = user_gen[len(user_only_text):]
    default_system = None
    if d0 != prefix["user"]:
        block = d0[: len(d0) - len(prefix["user"])] if d0.endswith(prefix["user"]) else None
        if block is None or not (block.startswith(prefix["system"]) and block.endswith(suffix["system"])):
            raise _cannot("the text before a lone user turn is neither the user prefix nor a system turn")
        default_system = block[len(prefix["system"]): len(block) - len(suffix["system"])]
    if adds_bos and start:  # llama.cpp prepends BOS itself
        return ChatFormat(prefix, suffix, generation_prompt, default_system, start="", leading_bos=start)
    return ChatFormat(prefix, suffix, generation_prompt, default_system, start=start)


def expected_prompt(template: ChatTemplate, fmt: ChatFormat, messages: list[dict]) -> str:
    """The Jinja rendering with the generation prompt, minus the BOS llama.cpp adds by itself."""
    rendered = template.render(messages, add_generation_prompt=True)
    return rendered[len(fmt.leading_bos):] if fmt.leading_bos and rendered.startswith(fmt.leading_bos) else rendered


def check_parity(template: ChatTemplate, fmt: ChatFormat, *, go_template: str | None = None,
                 conversations: list[list[dict]] = PARITY_CONVERSATIONS, use_go: bool | None = None) -> dict:
    """Compare Jinja, the inferred format and (when Go is installed, or ``use_go``) real Go text/template.

    Raises:
        StageError: a conversation renders differently; the message shows where.
        DependencyMissingError: ``use_go`` is True and there is no Go toolchain.
    """
    go_template = go_template if go_template is not None else fmt.go_template()
    go = go_available() if use_go is None else use_go
    for n, messages in enumerate(conversations, 1):
        want = expected_prompt(template, fmt, messages)
        got = fmt.render(messages)
        if got != want:
            raise _cannot(f"conversation {n} renders differently: {_first_difference(want, got)}")
        if go:
            rendered = render_as_ollama(go_template, messages)
            if rendered != want:
                raise StageError("ollama template", f"the Go TEMPLATE renders conversation {n} differently from "
                                                    f"the Jinja chat template: {_first_difference(want, rendered)}")
    return {"conversations": len(conversations), "checked_with": "go text/template" if go else
            "packager's model of the template (install Go to check with text/template itself)"}


def check_user_template(template: ChatTemplate, go_template: str, *,
                        conversations: list[list[dict]] = PARITY_CONVERSATIONS) -> dict:
    """Check the user's own TEMPLATE (``containers.ollama.template``) against the Jinja chat template on the
    parity conversations, with Go's text/template. Needs no inferred structure: it is the way out for
    templates packager cannot translate.

    Raises:
        StageError: a conversation renders differently; the message shows where.
        DependencyMissingError: there is no Go toolchain.
    """
    bos = template.bos_token if template.adds_bos else ""  # llama.cpp prepends BOS itself
    for n, messages in enumerate(conversations, 1):
        want = template.render(messages, add_generation_prompt=True)
        want = want[len(bos):] if bos and want.startswith(bos) else want
        rendered = render_as_ollama(go_template, messages)
        if rendered != want:
            raise StageError("ollama template", f"containers.ollama.template renders conversation {n} differently "
                                                f"from the Jinja chat template: {_first_difference(want, rendered)}")
    return {"conversations": len(conversations), "checked_with": "go text/template (containers.ollama.template)"}


def _first_difference(want: str, got: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return f"at character {at}, Jinja has {want[at:at + 40]!r}, the TEMPLATE has {got[at:at + 40]!r}"
