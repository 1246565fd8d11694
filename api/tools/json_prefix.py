"""A JSON value read while it is still being written: what is complete, and how far the rest goes.

The tool-call readers (api/tools/readers.py) run `PrefixParser` over the answer so far on
every piece of generated text, so that a call's name is known as soon as it is complete and
its arguments stream as the raw JSON text the model wrote.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


def json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text




@dataclass
class Node:
    kind: str  # object, array, string, literal
    start: int
    end: int | None = None  # one past the value's last character, None while it is incomplete
    items: list[tuple[str, Node | None]] = field(default_factory=list)  # objects
    elements: list[Node] = field(default_factory=list)  # arrays
    decoded: str = ""  # strings, as far as complete characters go
    resume_at: int = 0  # strings: the offset decoding reached


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_BLANKS = " \t\n\r"
_PLAIN = re.compile(r'[^"\\]+')
_LITERAL_END = _BLANKS + ",]}"


class PrefixParser:
    """Parses a prefix of one JSON value: what is complete, and how far the rest goes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def _blanks(self) -> None:
        while self.at < len(self.text) and self.text[self.at] in _BLANKS:
            self.at += 1

    def value(self) -> Node | None:
        self._blanks()
        if self.at >= len(self.text):
            return None
        first = self.text[self.at]
        if first == "{":
            return self._object()
        if first == "[":
            return self._array()
        if first == '"':
            return self._string()
        return self._literal()

    def _object(self) -> Node:
        return self._container("object", "}")

    def _array(self) -> Node:
        return self._container("array", "]")

    def _container(self, kind: str, close: str) -> Node:
        """An object or array, as far as it goes: items (objects) or elements (arrays) read so far."""
        node = Node(kind, self.at)
        self.at += 1
        while True:
            self._blanks()
            if self.at >= len(self.text):
                return node
            char = self.text[self.at]
            if char == close:
                self.at += 1
                node.end = self.at
                return node
            if char == ",":
                self.at += 1
                continue
            key = self._key() if kind == "object" else None
            if kind == "object" and key is None:
                return node
            value = self.value()
            if key is not None:
                node.items.append((key, value))
            elif value is not None:
                node.elements.append(value)
            if value is None or value.end is None:
                return node

    def _key(self) -> str | None:
        """An object key and its colon, or None when they are not (yet) all there."""
        if self.text[self.at] != '"':
            return None  # not JSON: stop reading here
        key = self._string()
        self._blanks()
        if key.end is None or self.at >= len(self.text) or self.text[self.at] != ":":
            return None
        self.at += 1
        return key.decoded

    def _string(self, resume: tuple[int, str] | None = None) -> Node:
        """A string from `self.at` (its opening quote); `resume`: (offset, text decoded up to it), to go on from there."""
        node = Node("string", self.at)
        text = self.text
        at, parts = (resume[0], [resume[1]]) if resume else (self.at + 1, [])
        while at < len(text):
            plain = _PLAIN.match(text, at)  # the run of ordinary characters, at C speed
            if plain:
                parts.append(plain.group())
                at = plain.end()
                continue
            if text[at] == '"':
                node.end = at + 1
                break
            if at + 1 >= len(text):
                break  # an escape cut off: its character comes with the next piece
            code = text[at + 1]
            if code in _ESCAPES:
                parts.append(_ESCAPES[code])
                at += 2
                continue
            if code != "u" or at + 6 > len(text):
                break
            unit = int(text[at + 2 : at + 6], 16)
            if 0xD800 <= unit < 0xDC00:  # a surrogate pair: wait for its second half
                if at + 12 > len(text):
                    break
                low = int(text[at + 8 : at + 12], 16)
                parts.append(chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)))
                at += 12
            else:
                parts.append(chr(unit))
                at += 6
        node.decoded = "".join(parts)
        node.resume_at = at  # where decoding stopped (before a cut-off escape, if any)
        self.at = node.end if node.end is not None else len(text)
        return node

    def _literal(self) -> Node:
        node = Node("literal", self.at)
        while self.at < len(self.text) and self.text[self.at] not in _LITERAL_END:
            self.at += 1
        if self.at < len(self.text):  # a delimiter follows: the number or word is whole
            node.end = self.at
        return node
