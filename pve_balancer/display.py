"""Text from outside, made safe to show an operator.

Guest names, node names, tags, task ids and error bodies come from the API
(and through it from whoever may name a guest). Written raw, a newline
forges a whole journal line or `status` row, and an ANSI or OSC escape
rewrites the operator's terminal (colours, title, hyperlinks, cursor
moves). Every place that shows such text, the journal handler, the
`STATUS=` line sent to systemd and the `status` and `plan` output, passes
it through `display_safe` (or `display_safe_block` for our own multi-line
tracebacks), so the rule is written once.

Escaped: every control character (C0, DEL, C1: this includes ESC, CR, LF,
TAB and BEL), Unicode format characters (bidirectional overrides,
zero-width characters), line and paragraph separators and lone
surrogates. Each becomes a visible `\\n`, `\\t`, `\\r`, `\\xHH` or `\\uHHHH`;
everything else, accented letters included, is kept as it is.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES


def display_safe(text: object) -> str:
    """`text` as one line with no control, escape or format character."""
    s = text if isinstance(text, str) else str(text)
    if s.isascii() and s.isprintable():  # the common case, fast
        return s
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in s)


def display_safe_block(text: str) -> str:
    """Like `display_safe`, but keeps line breaks, for a traceback: every
    line after the first is indented, so none of them, not even one that
    came from an exception's message, can pass for a line of its own."""
    first, *rest = text.rstrip("\n").split("\n")
    return "\n".join([display_safe(first), *("  " + display_safe(line) for line in rest)])
