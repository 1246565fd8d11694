"""Tool calls read from an answer as it is generated, in either format the plan chose.

`HermesReader` reads `<tool_call>{"name", "arguments"}</tool_call>` blocks after words;
`EnvelopeReader` reads the generic envelope (api/tools/plan.py): the words of a `response`
stream as text, each call is reported as soon as its name is complete, and its arguments as
they are written (the raw JSON text, so streamed fragments join to exactly the arguments of
the whole answer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from api.tools.json_prefix import Node, PrefixParser, json_or_text

# Keys of the generic envelope, and the markers of a Hermes-format call.
CALLS, CALL, RESPONSE = "tool_calls", "tool_call", "response"
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"


# -- reading the answer ----------------------------------------------------------------------


@dataclass
class Call:
    """One tool call read from the answer so far."""

    index: int
    name: str
    arguments: str = ""  # the raw JSON text of the arguments, as far as written
    complete: bool = False


@dataclass
class ReaderUpdate:
    """What one piece of generated text added."""

    text: str = ""  # new words of a `response`
    started: list[Call] = field(default_factory=list)  # calls whose name just became known
    arguments: list[tuple[int, str]] = field(default_factory=list)  # (call index, new argument text)
    completed: list[Call] = field(default_factory=list)  # calls whose arguments just ended


class HermesReader:
    """Reads Hermes-format answers as they are generated: words, then <tool_call>{"name", "arguments"}</tool_call> blocks.

    Words stream as they come, holding back what could be the start of a <tool_call>; each
    call is reported whole once its block closes (arguments re-encoded compactly). What a
    model writes after its first call is not words of the answer. A block that is not a
    call (not JSON, or no name) is returned as words instead.
    """

    def __init__(self) -> None:
        self.text = ""
        self.content = ""
        self.calls: list[Call] = []
        self._read = 0  # text before this offset has been turned into words or calls

    def feed(self, piece: str) -> ReaderUpdate:
        update = ReaderUpdate()
        self.text += piece
        while True:
            opening = self.text.find(HERMES_OPEN, self._read)
            if opening < 0:
                if not self.calls:
                    held = _partial_suffix(self.text, HERMES_OPEN, self._read)
                    update.text += self._words(len(self.text) - held)
                return update
            if not self.calls:
                update.text += self._words(opening)
            closing = self.text.find(HERMES_CLOSE, opening)
            if closing < 0:
                return update
            block = self.text[opening + len(HERMES_OPEN) : closing]
            self._read = closing + len(HERMES_CLOSE)
            call = self._call(block)
            if call is None:
                update.text += self._add_words(self.text[opening : self._read])
                continue
            self.calls.append(call)
            update.started.append(call)
            update.arguments.append((call.index, call.arguments))
            update.completed.append(call)

    def finish(self) -> ReaderUpdate:
        """The end: words held back in case they began a call are words after all."""
        if self.calls or self._read >= len(self.text):
            return ReaderUpdate()
        return ReaderUpdate(text=self._words(len(self.text)))

    def _words(self, end: int) -> str:
        if end <= self._read:
            return ""
        words, self._read = self.text[self._read : end], end
        return self._add_words(words)

    def _add_words(self, words: str) -> str:
        if self.calls:
            return ""
        self.content += words
        return words

    def _call(self, block: str) -> Call | None:
        try:
            value = json.loads(block)
        except ValueError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            arguments = json_or_text(arguments)
        return Call(len(self.calls), value["name"], json.dumps(arguments, ensure_ascii=False), complete=True)


def _partial_suffix(text: str, marker: str, start: int) -> int:
    """Length of the longest end of text[start:] that is a proper beginning of `marker`."""
    for size in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class EnvelopeReader:
    """Reads a tool envelope as it is generated (the grammar guarantees its form)."""

    def finish(self) -> ReaderUpdate:
        """The end: everything was reported as it came."""
        return ReaderUpdate()

    def __init__(self) -> None:
        self.text = ""
        self.content = ""
        self.calls: list[Call] = []
        # Inside the words of a `response`: (its opening quote, decoded up to which offset) — the
        # rest of the envelope is then only its closing, so only the new characters are read.
        self._words: tuple[int, int] | None = None

    def feed(self, piece: str) -> ReaderUpdate:
        update = ReaderUpdate()
        if not piece:
            return update
        self.text += piece
        if self._words is not None:
            start, resume_at = self._words
            parser = PrefixParser(self.text)
            parser.at = start
            words = parser._string((resume_at, self.content))
            update.text = words.decoded[len(self.content) :]
            self.content = words.decoded
            self._words = (start, words.resume_at) if words.end is None else None
            return update
        root = PrefixParser(self.text).value()
        if root is None or root.kind != "object":
            return update
        for key, node in root.items:
            if key == RESPONSE and node is not None and node.kind == "string":
                update.text = node.decoded[len(self.content) :]
                self.content = node.decoded
                if node.end is None:
                    self._words = (node.start, node.resume_at)
            elif key == CALLS and node is not None and node.kind == "array":
                for index, item in enumerate(node.elements):
                    self._call(index, item, update)
            elif key == CALL and node is not None:
                self._call(0, node, update)
        return update

    def _call(self, index: int, node: Node | None, update: ReaderUpdate) -> None:
        if node is None or node.kind != "object":
            return
        fields = dict(node.items)
        name, arguments = fields.get("name"), fields.get("arguments")
        if index >= len(self.calls):
            if name is None or name.kind != "string" or name.end is None:
                return  # reported once the name is complete
            call = Call(index, name.decoded)
            self.calls.append(call)
            update.started.append(call)
        call = self.calls[index]
        if call.complete or arguments is None:
            return
        raw = self.text[arguments.start : arguments.end if arguments.end is not None else len(self.text)]
        if len(raw) > len(call.arguments):
            update.arguments.append((index, raw[len(call.arguments) :]))
            call.arguments = raw
        if arguments.end is not None:
            call.complete = True
            update.completed.append(call)


