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
(messages collated, a map for data, its functions; see :func:`render_as_ollama`). The check is in
packager/serve/ollama_parity.py.
A template whose output the inference cannot reproduce is refused, naming the conversation
that differs, rather than shipped wrong.
"""

from __future__ import annotations

import datetime
import dataclasses
import os
from dataclasses import dataclass

from packager.errors import StageError
from packager.models.chat_template import ChatTemplate
from packager.serve.modelfile import go_printable, go_string_constant
from packager.serve.parity import PARITY_DATE, ROLES, first_difference
from packager.serve.tool_format import ToolFormat, common_suffix, cut_at_marks, go_tools, infer_tool_format


_MARK = {"system": "\x02PKGSYS{}\x03", "user": "\x02PKGUSR{}\x03", "assistant": "\x02PKGAST{}\x03"}


@dataclass(frozen=True)
class ChatFormat:
    """A chat template reduced to its turn structure."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation_prompt: str
    default_system: str | None  # content of the system turn the template adds when there is none
    start: str = ""  # written once before the first turn (the BOS text, when the tokenizer does not add BOS)
    leading_bos: str = ""  # BOS text Jinja writes first that llama.cpp adds itself, so Go must not [doubled BOS]
    system: str = "turn"
    """Where a leading system message goes: a ``turn`` of its own; into the ``first_user`` turn, wrapped in the
    system prefix and suffix before the user's content (Gemma 3's template, data.system_policy
    merge_into_first_user); or nowhere (``drop``: data.system_policy drop)."""
    skip_empty_system: bool = False  # an empty system message leaves no trace (Phi-3.5's template)
    lone_system_as_user: bool = False
    """With ``first_user``: a leading system message that no user message follows (a history Ollama truncated to
    start with an assistant turn) is a user turn of its own, as data.system_policy merge_into_first_user writes it
    so that turns keep alternating."""
    tools: ToolFormat | None = None  # how the template writes function calling, where a TEMPLATE can too
    tools_refused: str | None = None  # why a TEMPLATE cannot write the template's function calling

    def render(self, messages: list[dict], *, today: datetime.date = PARITY_DATE) -> str:
        """What the Go template renders for ``messages`` on ``today`` (its currentDate)."""
        out = [self.start]
        if self.default_system is not None and messages[0]["role"] != "system":
            out.append(self.prefix["system"] + self.default_system + self.suffix["system"])
        pending = None  # the system text still to put into the first user turn
        if self.system != "turn" and messages and messages[0]["role"] == "system":
            pending = messages[0]["content"] if self.system == "first_user" else None
            pending = None if self.skip_empty_system and not pending else pending
            messages = messages[1:]
            if pending is not None and self.lone_system_as_user and messages and messages[0]["role"] != "user":
                out.append(self.prefix["user"] + pending + self.suffix["user"])
                pending = None
        for i, message in enumerate(messages):
            last = i == len(messages) - 1
            role, content = message["role"], message["content"]
            if role == "system" and self.skip_empty_system and not content:
                continue
            if role == "user" and pending is not None:
                content, pending = self.prefix["system"] + pending + self.suffix["system"] + content, None
            out.append(self.prefix[role] + content)
            if not (last and role == "assistant"):
                out.append(self.suffix[role])
            if last and role != "assistant":
                out.append(self.generation_prompt)
        return _dates_filled("".join(out), today)

    def go_template(self) -> str:
        """The Ollama TEMPLATE: Go text/template over ``.Messages`` (``.Role``, ``.Content``)."""
        tools = go_tools(self.tools) if self.tools else None
        lines = list(tools.definitions) if tools else []
        lines += [_go_text(self.start)] if self.start else []
        if tools:
            lines.append(tools.system)
        if self.default_system is not None:
            lines.append('{{- if and ' + ("(not .Tools) " if tools else "") + '.Messages (ne (index .Messages 0).Role '
                         '"system") }}'
                         + _go_text(self.prefix["system"] + self.default_system + self.suffix["system"])
                         + "{{ end }}")
        if self.system == "first_user":  # the leading system message, held for the first user turn
            lines.append('{{- $system := "" }}{{- $pending := false }}')
            lines.append('{{- if and .Messages (eq (index .Messages 0).Role "system") }}'
                         '{{- $system = (index .Messages 0).Content }}'
                         + ('{{- $pending = ne $system "" }}' if self.skip_empty_system else '{{- $pending = true }}')
                         + '{{- end }}')
            if self.lone_system_as_user:
                lines.append('{{- if and $pending (gt (len .Messages) 1) (ne (index .Messages 1).Role "user") }}'
                             + _go_text(self.prefix["user"]) + "{{ $system }}" + _go_text(self.suffix["user"])
                             + "{{ $pending = false }}{{ end }}")
        lines.append("{{- $prev := \"\" }}" if tools else "")
        lines.append("{{- range $i, $m := .Messages }}")
        lines.append("{{- $last := eq (len (slice $.Messages $i)) 1 }}")
        for n, role in enumerate(ROLES):
            keyword = "if" if n == 0 else "else if"
            suffix = _go_text(self.suffix[role])
            if role == "assistant":
                suffix = "{{ if not $last }}" + suffix + "{{ end }}" if suffix else ""
            if role == "system" and self.system != "turn":
                lines.append(f'{{{{- {keyword} eq .Role "system" }}}}')
                continue
            held = ""
            if role == "user" and self.system == "first_user":
                held = ("{{ if $pending }}" + _go_text(self.prefix["system"]) + "{{ $system }}"
                        + _go_text(self.suffix["system"]) + "{{ $pending = false }}{{ end }}")
            if role == "system" and self.skip_empty_system:
                lines.append(f'{{{{- {keyword} eq .Role "system" }}}}{{{{ if .Content }}}}'
                             + _go_text(self.prefix[role]) + "{{ .Content }}" + suffix + "{{ end }}")
                continue
            if role == "system" and tools:  # the first is written with the tools, when there are tools
                lines.append(f'{{{{- {keyword} eq .Role "system" }}}}{{{{ if not (and $.Tools (eq $i 0)) }}}}'
                             + _go_text(self.prefix[role]) + "{{ .Content }}" + suffix + "{{ end }}")
                continue
            calls = tools.assistant_calls if tools and role == "assistant" else ""
            lines.append(f'{{{{- {keyword} eq .Role "{role}" }}}}' + _go_text(self.prefix[role]) + held
                         + "{{ .Content }}" + calls + suffix)
        if tools:
            lines.append('{{- else if eq .Role "tool" }}' + tools.tool_result)
        lines.append("{{- end }}")
        lines.append('{{- if and $last (ne .Role "assistant") }}' + _go_text(self.generation_prompt) + "{{ end }}")
        if tools:
            lines.append("{{- $prev = .Role }}")
        lines.append("{{- end }}")
        return "\n".join(line for line in lines if line)


# Today's date, YYYY-MM-DD, in a render: the one date form a Jinja template and a TEMPLATE can both write (Ollama's
# currentDate, template/template.go funcs; Jinja cannot compute its yesterdayDate). Marked in the renders the
# structure is read from, so a template that writes it (Mistral Small 3's default system prompt,
# strftime_now("%Y-%m-%d")) becomes a TEMPLATE that writes the day it runs on. A fixed date that happens to be
# the parity day is told apart by the render on another day, which keeps it.
_TODAY = "\x04TODAY\x04"


def _dates_marked(rendered: str, today: datetime.date) -> str:
    return rendered.replace(today.isoformat(), _TODAY)


def _dates_filled(text: str, today: datetime.date) -> str:
    return text.replace(_TODAY, today.isoformat())


def _go_text(text: str) -> str:
    """Literal text for a Go template: raw where that is safe, else a Go string constant.

    Quoted when it contains an action delimiter, ends in whitespace that the next line's ``{{-`` would trim, or
    holds a character that Ollama's Modelfile parser would delete (a no-break space, a zero-width space: the
    constant spells it as an escape).
    """
    if _TODAY in text:
        return "{{ currentDate }}".join(_go_text(part) if part else "" for part in text.split(_TODAY))
    hidden = not all(go_printable(c) or c in "\n\t" for c in text)
    if "{{" in text or "}}" in text or text != text.rstrip() or hidden:
        return "{{ " + go_string_constant(text) + " }}"
    return text


def _split(rendered: str, marks: list[str], what: str) -> list[str]:
    """The text between the marker contents, in order: len(marks) + 1 pieces."""
    pieces = cut_at_marks(rendered, marks)
    if pieces is None:
        raise cannot_express(f"{what}: the template does not write each message's content exactly once")
    return pieces


def cannot_express(reason: str) -> StageError:
    return StageError("ollama template", f"cannot express this chat template as an Ollama TEMPLATE: {reason}",
                      hint="write the Go template yourself and set containers.ollama.template: FILE in "
                           "packager.yaml; packager checks it against the Jinja template")


def infer_chat_format(template: ChatTemplate) -> ChatFormat:
    """Read the turn structure off renders with marker contents (see the module docstring)."""
    s, u1, a1, u2, a2 = _MARK["system"].format(1), _MARK["user"].format(1), _MARK["assistant"].format(1), \
        _MARK["user"].format(2), _MARK["assistant"].format(2)
    msg = lambda role, content: {"role": role, "content": content}  # noqa: E731
    turns = [msg("user", u1), msg("assistant", a1), msg("user", u2), msg("assistant", a2)]

    def render(messages: list[dict], *, generation: bool = False, today: datetime.date = PARITY_DATE) -> str:
        return _dates_marked(template.render(messages, add_generation_prompt=generation, today=today), today)

    try:
        bare = render(turns)
        user_only = render([msg("user", u1)])
        user_gen = render([msg("user", u1)], generation=True)
        another_day = render([msg("user", u1)], generation=True, today=PARITY_DATE + datetime.timedelta(days=400))
    except Exception as exc:  # jinja2 errors, raise_exception() in the template
        raise cannot_express(f"rendering it failed: {exc}") from None
    if another_day != user_gen:  # Llama 3.1's "Today Date: 31 Jan 2025" (strftime_now); an ISO date is marked
        raise cannot_express(f"it writes today's date into the prompt ({first_difference(user_gen, another_day)} a "
                      "year later), which a TEMPLATE can only write as Ollama's currentDate, YYYY-MM-DD")
    try:
        full = render([msg("system", s)] + turns)
        with_system = render([msg("system", s), msg("user", u1)])
        empty_system = render([msg("system", ""), msg("user", u1)])
    except Exception as exc:  # noqa: BLE001
        raise cannot_express(f"it raises on a system message ({exc}); set data.system_policy to merge_into_first_user "
                      "or drop, which the Go template can follow") from None
    renders = _Renders(bare=_split(bare, [u1, a1, u2, a2], "a four-turn conversation"),
                       full=_split(full, [s, u1, a1, u2, a2], "a system turn and four more") if s in full else None,
                       dropped=s not in full and s not in with_system and full == bare and with_system == user_only,
                       with_system=_split(with_system, [s, u1], "a system and a user turn") if s in with_system else
                       None, user_only=_split(user_only, [u1], "a single user turn"), user_only_text=user_only,
                       user_gen=user_gen, empty_system_skipped=empty_system == user_only)
    fmt = _structure_from_its_start(renders, template, [bare, full, with_system, user_only])
    if fmt.system != "first_user":
        return _with_tools(template, fmt)
    # A system message before an assistant turn: held for the user turn after it, or a user turn of its own?
    lone = [msg("system", s), msg("assistant", a1), msg("user", u1)]
    try:
        rendered = render(lone, generation=True)
    except Exception:  # noqa: BLE001 - Gemma 3 raises: its turns must alternate; the parity check names it
        return _with_tools(template, fmt)
    alone = dataclasses.replace(fmt, lone_system_as_user=True)
    return _with_tools(template, alone if fmt.leading_bos + _dates_marked(alone.render(lone), PARITY_DATE) == rendered
                       else fmt)


def _structure_from_its_start(renders: _Renders, template: ChatTemplate, texts: list[str]) -> ChatFormat:
    """The turn structure after what starts every conversation. BOS text there is either part of the first turn
    (ChatML whose BOS is <|im_start|>) or written once before it (Llama 3); try both, the likelier first. Else a
    constant preamble (GLM-4's "[gMASK]<sop>"): the longest start shared by every render that works."""
    bos = template.bos_token
    candidates = [""]
    if bos and all(text.startswith(bos) for text in texts):
        candidates = [bos, ""] if template.adds_bos else ["", bos]
    shared = os.path.commonprefix(texts)
    preambles = [shared[:k] for k in range(len(shared), 0, -1) if shared[:k] not in candidates]
    refusal = None
    for start in candidates + preambles:
        try:
            return _structure(renders, start=start, adds_bos=template.adds_bos and start == bos)
        except StageError as exc:
            refusal = exc if start in candidates else refusal  # the reason given is the one without a preamble
    raise refusal


def _with_tools(template: ChatTemplate, fmt: ChatFormat) -> ChatFormat:
    """``fmt`` with the template's function calling, or why a TEMPLATE cannot write it."""
    if fmt.system != "turn":
        return dataclasses.replace(fmt, tools_refused="packager writes the tools into a system turn, and this "
                                                      "template has no system turn of its own")
    try:
        tools = infer_tool_format(template, start=fmt.leading_bos + fmt.start, prefix=fmt.prefix, suffix=fmt.suffix)
    except StageError as exc:
        return dataclasses.replace(fmt, tools_refused=str(exc))
    return dataclasses.replace(fmt, tools=tools)


@dataclass(frozen=True)
class _Renders:
    """The template's renders of marker conversations, cut at the markers."""

    bare: list[str]  # user, assistant, user, assistant
    full: list[str] | None  # the same after a system message; None when the system text is not in it
    dropped: bool  # the system message leaves no trace at all
    with_system: list[str] | None  # system, user
    user_only: list[str]
    user_only_text: str
    user_gen: str  # a single user turn with the generation prompt
    empty_system_skipped: bool  # an empty system message before it renders as the user turn alone


def _structure(r: _Renders, *, start: str, adds_bos: bool) -> ChatFormat:
    b0, b1, b2, b3, b4 = r.bare
    d0, d1 = r.user_only
    if not (b0.startswith(start) and d0.startswith(start)):
        raise cannot_express("conversations do not all start the same way")
    b0, d0 = b0[len(start):], d0[len(start):]
    end = ""  # written after the last turn of a conversation without a generation prompt (Phi-3's EOS)
    if not b2.startswith(b4):
        user_prefix = common_suffix(b0, b2)  # what opens every user turn, the first one included
        assistant_suffix = b2[: len(b2) - len(user_prefix)]
        if not user_prefix or not b4.startswith(assistant_suffix) or not d1.endswith(b4[len(assistant_suffix):]):
            raise cannot_express("the text after an assistant turn differs between the middle and the end of a "
                          "conversation")
        end = b4[len(assistant_suffix):]
    suffix = {"assistant": b4[: len(b4) - len(end)], "user": d1[: len(d1) - len(end)]}
    prefix = {"user": b2[len(suffix["assistant"]):]}
    if not b1.startswith(suffix["user"]) or b3 != b1:
        raise cannot_express("user turns are not written the same way each time")
    prefix["assistant"] = b1[len(suffix["user"]):]
    if b0 != d0:
        raise cannot_express("the text before the first user turn depends on the rest of the conversation")
    conversation = r.user_only_text[: len(r.user_only_text) - len(end)]
    if not r.user_gen.startswith(conversation):
        raise cannot_express("the generation prompt is not appended after the conversation")
    generation_prompt = r.user_gen[len(conversation):]
    system, default_system = _system_structure(r, prefix, suffix, start=start, lead=b0)
    skip = r.empty_system_skipped and system != "drop"
    if adds_bos and start:  # llama.cpp prepends BOS itself
        return ChatFormat(prefix, suffix, generation_prompt, default_system, start="", leading_bos=start,
                          system=system, skip_empty_system=skip)
    return ChatFormat(prefix, suffix, generation_prompt, default_system, start=start, system=system,
                      skip_empty_system=skip)


def _system_structure(r: _Renders, prefix: dict[str, str], suffix: dict[str, str], *, start: str,
                      lead: str) -> tuple[str, str | None]:
    """How a leading system message is written (fills ``prefix`` and ``suffix`` for it), and the default system
    content the template writes when there is none. ``lead`` is the text before a first user turn."""
    if r.dropped:
        if lead != prefix["user"]:
            raise cannot_express("the template drops a system message but writes text of its own before the first turn")
        prefix["system"] = suffix["system"] = ""
        return "drop", None
    if r.full is None or r.with_system is None:
        raise cannot_express("the system message is written in some conversations and not in others")
    p0, p1, *rest = r.full
    if rest != list(r.bare[1:]) or list(r.with_system) != [p0, p1, r.user_only[1]]:
        raise cannot_express("the turns after a system message are not written as they are without one")
    if not p0.startswith(start):
        raise cannot_express("conversations do not all start the same way")
    p0 = p0[len(start):]
    if p1.endswith(prefix["user"]):  # a turn of its own
        prefix["system"], suffix["system"] = p0, p1[: len(p1) - len(prefix["user"])]
        if lead == prefix["user"]:
            return "turn", None
        block = lead[: len(lead) - len(prefix["user"])] if lead.endswith(prefix["user"]) else None
        if block is None or not (block.startswith(prefix["system"]) and block.endswith(suffix["system"])):
            raise cannot_express("the text before a lone user turn is neither the user prefix nor a system turn")
        return "turn", block[len(prefix["system"]): len(block) - len(suffix["system"])]
    if p0.startswith(prefix["user"]) and lead == prefix["user"]:  # inside the first user turn (Gemma 3)
        prefix["system"], suffix["system"] = p0[len(prefix["user"]):], p1
        return "first_user", None
    raise cannot_express("the system turn is neither a turn of its own nor part of the first user turn")
