"""Text that came from the peer, made safe for a log line.

A server name, a certificate's subject, an ALPN protocol or an error reason
that quotes them are chosen by whoever is on the other end. Written as they
are into a text log, a newline in one of them starts a line of the peer's
own making, and a NUL or an escape sequence corrupts what a reader or a
terminal shows. :class:`PeerText` is a ``str`` that keeps its value (JSON
logs encode it as it is, escapes and all) but formats itself with every
character that is not printable written as an escape, so text and logfmt
lines show exactly one line per event.
"""

from __future__ import annotations

__all__ = ["PeerText", "printable"]


def printable(text: str) -> str:
    """*text* with backslashes doubled and every unprintable character escaped.

    Unprintable is what ``str.isprintable`` says: control characters (C0,
    DEL, C1), line and paragraph separators, and format characters such as
    the bidirectional overrides that reorder what a reader sees.
    """
    if text.isprintable() and "\\" not in text:
        return str.__str__(text)  # a plain str, even for a PeerText
    out = []
    for character in text:
        if character == "\\":
            out.append("\\\\")
        elif character.isprintable():
            out.append(character)
        elif ord(character) < 0x100:
            out.append(f"\\x{ord(character):02x}")
        elif ord(character) < 0x10000:
            out.append(f"\\u{ord(character):04x}")
        else:
            out.append(f"\\U{ord(character):08x}")
    return "".join(out)


class PeerText(str):
    """A string from the peer: itself to JSON, escaped (see :func:`printable`) when formatted."""

    __slots__ = ()

    def __format__(self, spec: str) -> str:
        return format(printable(str.__str__(self)), spec)

    def __str__(self) -> str:
        return printable(str.__str__(self))
