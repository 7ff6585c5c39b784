"""Modelfile text as Ollama reads it: a model of its parser, the quoting that makes every value read back exactly,
and the check that the whole rendered Modelfile says what packager meant.

Ollama's parser (parser/parser.go, ``ParseFile``/``parseRuneForState``/``unquote``; the value rules are the same
from v0.9.3 through v0.32.15) is a state machine over runes. Three of its rules decide what a value becomes:

- a value ends at the first space or line break after which the text so far, trimmed, is a complete value:
  ``\"\"\"...\"\"\"``, ``"..."`` or bare words; so a bare value or a ``"..."`` value runs on past a space, and a
  ``"..."`` value that does not end in ``"`` on its line runs on into the next lines;
- quotes are stripped and nothing else: ``"\\""`` reaches Ollama as the two characters ``\\"``, not ``"``, so a
  stop token written as a JSON string is not the stop token;
- every character that Go's ``strconv.IsPrint`` calls non-printable is deleted, except spaces, tabs and line breaks
  inside a value: a no-break space, a zero-width space, U+2028 or ESC in a TEMPLATE silently disappear.

Names follow types/model/name.go: a model part is at most 80 bytes of letters, digits, ``_``, ``-`` and ``.``,
starting with a letter, digit or ``_``; ``ollama create`` refuses anything else. A ``FROM`` path that is not a file
silently becomes the name of a model to pull (parser.go ``CreateRequest``), so packager checks that ``FROM`` and
``ADAPTER`` name files of the build context.
"""

from __future__ import annotations

import re
import unicodedata

from packager.errors import StageError


COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
            "message", "requires")
ROLES = ("system", "user", "assistant")
SPACES, LINE_BREAKS = " \t", "\r\n"
OLLAMA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
"""The model part of an Ollama name (types/model/name.go ``isValidPart``, ``isValidLen``: 1-80 bytes)."""
_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)


class ModelfileSyntaxError(ValueError):
    """Ollama's parser would refuse this Modelfile (``line`` as it counts them, or 0 at the end)."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


def go_printable(char: str) -> bool:
    """Go's ``strconv.IsPrint``: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return char == " " or unicodedata.category(char)[0] in "LMNPS"


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """The (command, argument) pairs Ollama's ``ParseFile`` makes of ``text``: ``FROM`` is ``model``, a
    ``PARAMETER`` is its own name, a ``MESSAGE`` is ``role: content``.

    Raises:
        ModelfileSyntaxError: where Ollama's parser would fail, with its line number.
    """
    commands: list[tuple[str, str]] = []
    state, buffer, name, role, line = _NIL, [], "", "", 1
    for char in text.removeprefix("\ufeff"):
        if char in LINE_BREAKS:
            line += 1
        following, kept = _next_state(char, state, line)
        if following != state:
            word = "".join(buffer)
            if state == _NAME:
                name, following = _command(word, following, line)
            elif state == _PARAMETER:
                name = word
            elif state == _MESSAGE:
                if word not in ROLES:
                    raise ModelfileSyntaxError(line, 'message role must be one of "system", "user", or "assistant"')
                role = word
            elif state == _VALUE:
                value, complete = unquote(word.strip(SPACES + LINE_BREAKS))
                if not complete or char in SPACES:
                    buffer.append(char)  # the value goes on: kept even where it is not printable
                    continue
                commands.append((name, f"{role}: {value}" if role else value))
                role = ""
            buffer, state = [], following
        if kept and go_printable(kept):
            buffer.append(kept)
    if state == _VALUE:
        value, complete = unquote("".join(buffer).strip(SPACES + LINE_BREAKS))
        if not complete:
            raise ModelfileSyntaxError(0, "unexpected EOF: a quoted value is not closed")
        commands.append((name, f"{role}: {value}" if role else value))
    elif state not in (_NIL, _COMMENT):
        raise ModelfileSyntaxError(0, "unexpected EOF")
    if not any(command == "model" for command, _ in commands):
        raise ModelfileSyntaxError(0, "no FROM line")
    return commands


def _command(word: str, following: int, line: int) -> tuple[str, int]:
    """A command word's name and the state after it (PARAMETER and MESSAGE read one more word)."""
    lowered = word.lower()
    if lowered not in COMMANDS:
        raise ModelfileSyntaxError(line, "command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS))
    if lowered == "parameter":
        return "", _PARAMETER
    if lowered == "message":
        return "message", _MESSAGE
    return ("model" if lowered == "from" else lowered), following


def _next_state(char: str, state: int, line: int) -> tuple[int, str]:
    """``parseRuneForState``: the next state and the character to keep ("" for none)."""
    if state == _NIL:
        if char == "#":
            return _COMMENT, ""
        return (_NIL, "") if char in SPACES + LINE_BREAKS else (_NAME, char)
    if state == _NAME:
        if _ascii_letter(char):
            return _NAME, char
        if char in SPACES:
            return _VALUE, ""
        raise ModelfileSyntaxError(line, "command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS))
    if state == _VALUE:
        return (_NIL, char) if char in SPACES + LINE_BREAKS else (_VALUE, char)
    if state in (_PARAMETER, _MESSAGE):
        if _ascii_letter(char) or (state == _PARAMETER and (char.isascii() and char.isdigit() or char == "_")):
            return state, char
        if char in SPACES:
            return _VALUE, ""
        raise ModelfileSyntaxError(line, "unexpected EOF")
    return (_NIL, "") if char in LINE_BREAKS else (_COMMENT, "")


def _ascii_letter(char: str) -> bool:
    return char.isascii() and char.isalpha()


def unquote(text: str) -> tuple[str, bool]:
    """Ollama's ``unquote``: the quotes stripped, nothing decoded; False while a quoted value is not closed."""
    if text.startswith('"""'):
        return (text[3:-3], True) if len(text) >= 6 and text.endswith('"""') else ("", False)
    if text.startswith('"'):
        return (text[1:-1], True) if len(text) >= 2 and text.endswith('"') else ("", False)
    return text, True


def modelfile_string(value: str, *, what: str) -> str:
    """``value`` written so that Ollama's parser reads back exactly ``value``: in double quotes where that works
    for one line, else in triple quotes, else bare.

    Raises:
        StageError: no quoting does, naming ``what`` and why (characters Ollama deletes; quotes it cannot hold).
    """
    hidden = sorted({f"U+{ord(c):04X}" for c in value if not (go_printable(c) or c in SPACES + LINE_BREAKS)})
    if hidden:
        raise StageError("containerize", f"{what} has characters that Ollama's Modelfile parser deletes "
                                         f"({', '.join(hidden)}): the model would get other text",
                         hint="remove them, or inside a Go TEMPLATE write them as a Go string constant, "
                              'e.g. {{ "\\u00a0" }}')
    quotings = [f'"{value}"', f'"""{value}"""'] if "\n" not in value else [f'"""{value}"""', f'"{value}"']
    for written in (*quotings, value):
        try:
            if parse_modelfile(f"FROM x\nLICENSE {written}\nSYSTEM x\n") == [("model", "x"), ("license", value),
                                                                              ("system", "x")]:
                return written
        except ModelfileSyntaxError:
            continue
    raise StageError("containerize", f"{what} cannot be written in a Modelfile so that Ollama reads it back: "
                                     'its quotes (""" or a " at either end) end every kind of Modelfile string',
                     hint="change the text")


def check_modelfile(text: str, meant: list[tuple[str, str]], *, context_files: set[str]) -> None:
    """Refuse a rendered Modelfile unless Ollama's parser reads from it exactly ``meant``, and its FROM and
    ADAPTER name files of the build context."""
    try:
        read = parse_modelfile(text)
    except ModelfileSyntaxError as e:
        raise StageError("containerize", f"Ollama would refuse the rendered Modelfile: {e}") from None
    for (command, got), (meant_command, want) in zip(read, meant):
        if (command, got) != (meant_command, want):
            raise StageError("containerize", f"the Modelfile's {meant_command.upper()} would reach Ollama as "
                                             f"{got[:200]!r}, not {want[:200]!r}")
    if len(read) != len(meant):
        raise StageError("containerize", f"Ollama would read {len(read)} Modelfile commands, not {len(meant)}: "
                                         f"{[c for c, _ in read]} vs {[c for c, _ in meant]}")
    for command, path in read:
        if command in ("model", "adapter") and path.removeprefix("./") not in context_files:
            raise StageError("containerize", f"the Modelfile's {'FROM' if command == 'model' else 'ADAPTER'} "
                                             f"{path!r} is not a file of the build context: Ollama would take it "
                                             "for a model to pull")


def check_ollama_name(name: str, *, what: str) -> str:
    """Refuse a model name ``ollama create`` would refuse (types/model/name.go)."""
    if not OLLAMA_NAME.fullmatch(name):
        raise StageError("containerize", f"{what} {name!r} is not a name Ollama accepts: at most 80 characters of "
                                         "letters, digits, '_', '-' and '.', starting with a letter, digit or '_' "
                                         "(Ollama's types/model/name.go)",
                         hint="choose a shorter run name (run.name)")
    return name


def go_string_constant(text: str) -> str:
    """``text`` as a Go string constant that a Modelfile carries intact: every character Ollama's parser would
    delete, and every control character, written as a Go escape."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif go_printable(char):
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'
