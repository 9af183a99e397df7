"""HTCondor's argument-string syntaxes, as condor_ssh_to_job applies them.

The real tool splits `-ssh CMD`, the `SSH_TO_JOB_<tool>_CMD` template and
`-keygen-options` with HTCondor's "V2" rules (whitespace separates words,
single quotes group, '' inside quotes is a literal quote; no backslash
escapes), and builds the `%x` proxy command with its "system" quoting (each
word in double quotes, `" \\ $ backtick` backslash-escaped).  A relay sees the
result in its hook's argv, so the stand-in must split exactly the same way.
"""

from __future__ import annotations

_WHITESPACE = " \t\n\r"


class ArgsError(ValueError):
    """An argument string HTCondor would reject; str() is HTCondor's message."""


def split_v2_raw(text: str) -> list[str]:
    """Split a raw V2 argument string into words (condor_arglist's split_args)."""
    words: list[str] = []
    buf: list[str] = []
    in_word = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            start = i
            in_word = True
            i += 1
            while True:
                if i >= len(text):
                    raise ArgsError(f"Unbalanced quote starting here: {text[start:]}")
                if text[i] == "'":
                    if text[i + 1:i + 2] == "'":
                        buf.append("'")
                        i += 2
                        continue
                    break
                buf.append(text[i])
                i += 1
            i += 1  # the closing quote
        elif ch in _WHITESPACE:
            i += 1
            if in_word:
                words.append("".join(buf))
                buf, in_word = [], False
        else:
            in_word = True
            buf.append(ch)
            i += 1
    if in_word:
        words.append("".join(buf))
    return words


def split_v2_quoted(text: str) -> list[str]:
    """Split a double-quoted V2 string (the form config templates use)."""
    stripped = text.lstrip()
    if not stripped.startswith('"'):
        raise ArgsError("Expecting double-quoted input string (V2 format).")
    raw: list[str] = []
    i = 1
    while True:
        if i >= len(stripped):
            raise ArgsError("Unterminated double-quote.")
        if stripped[i] == '"':
            if stripped[i + 1:i + 2] == '"':
                raw.append('"')
                i += 2
                continue
            break
        raw.append(stripped[i])
        i += 1
    trailing = stripped[i + 1:]
    if trailing.strip():
        raise ArgsError(
            "Unexpected characters following double-quote.  "
            "Did you forget to escape the double-quote by repeating it?  "
            f"Here is the quote and trailing characters: {stripped[i:]}\n")
    return split_v2_raw("".join(raw))


def join_system(words: list[str]) -> str:
    """Quote words for /bin/sh the way ArgList::GetArgsStringSystem does."""
    def quote(word: str) -> str:
        escaped = "".join("\\" + c if c in '"\\$`' else c for c in word)
        return f'"{escaped}"'
    return " ".join(quote(w) for w in words)


def join_for_display(words: list[str]) -> str:
    """Join words in V2 raw syntax (how -debug shows the ssh command)."""
    def quote(word: str) -> str:
        if not word:
            return "''"
        if not any(c in word for c in _WHITESPACE + "'"):
            return word
        return "'" + word.replace("'", "''") + "'"
    return " ".join(quote(w) for w in words)
