"""Structured output for both dialects: schemas and grammars to enforce, and tool calling.

**Schemas and grammars.** `schema_grammar` and `text_grammar` turn what a client sent
(OpenAI's `response_format`, llama.cpp's `grammar`, Ollama's `format`) into a runtime
`Grammar`, checked now, so a schema or grammar the engine cannot enforce is a 400 naming the
field before anything runs.

**Tools.** A chat template that takes `tools` and writes `<tool_call>` blocks (the Hermes
format, `tool_format`) gets them itself; its answers are read by `HermesReader`, and with
`required` or a named function constrained to such blocks by a Lark grammar. Every other
template gets them in a generic format (llama.cpp's "generic"
tool handler does the same). The tool list and the answer's form are written into the
system message (`ToolPlan.instructions`), and the answer is constrained to one JSON object:

    {"tool_calls": [{"name": <tool>, "arguments": {...}}, ...]}   several calls (parallel)
    {"tool_call": {"name": <tool>, "arguments": {...}}}           one call
    {"response": "<text>"}                                         an answer in words (auto)

`tool_choice` picks the forms allowed: "auto" all of them, "required" the calls only, a
named function one call of that function. Each call's `arguments` must match its tool's
JSON Schema. `EnvelopeReader` reads the answer as it is generated: the words of a
`response` stream as text, and each call is reported as soon as its name is complete, its
arguments as they are written (the raw JSON text, so streamed fragments join to exactly
the arguments of the whole answer). Earlier calls and tool results in the conversation are
written back in the same form (`history_message`), so the model sees its own format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from api.errors import BadRequest
from runtime.grammar import JSON_OPTIONS, Grammar, GrammarError, closed_objects

# Keys of the envelope.
CALLS, CALL, RESPONSE = "tool_calls", "tool_call", "response"
AUTO, REQUIRED, NONE = "auto", "required", "none"
# How tools reach the model and its calls come back: the generic envelope, or the Hermes
# format of templates that take `tools` themselves (Qwen2.5/3, Hermes, SmolLM3, …).
GENERIC, HERMES = "generic", "hermes"
_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"


def tool_format(template_source: str | None) -> str:
    """HERMES for a chat template that renders `tools` and writes calls as <tool_call> blocks, else GENERIC."""
    if template_source and _HERMES_OPEN in template_source and "tools" in template_source:
        return HERMES
    return GENERIC


def _checked(grammar: Grammar, param: str) -> Grammar:
    try:
        grammar.check()
    except GrammarError as exc:
        raise BadRequest(str(exc), param=param) from exc
    return grammar


def schema_grammar(schema: object, param: str, strict: bool = False) -> Grammar:
    """The grammar of JSON valid against `schema`; a 400 on `param` if it cannot be enforced."""
    if not isinstance(schema, (dict, bool)):
        raise BadRequest("a JSON schema must be an object (or a boolean)", param=param)
    if strict and isinstance(schema, dict):
        problem = strict_problem(schema)
        if problem:
            raise BadRequest(f"this schema is not valid for strict mode: {problem}", param=param)
    return _checked(Grammar.json_schema(schema), param)


def text_grammar(kind: str, source: str, param: str) -> Grammar:
    """A grammar given as text (GBNF, Lark, regex); a 400 on `param` if it cannot be compiled."""
    if not source.strip():
        raise BadRequest("the grammar is empty", param=param)
    return _checked(Grammar(kind, source), param)


def strict_problem(schema: Mapping[str, Any], where: str = "the schema") -> str | None:
    """Why `schema` breaks OpenAI's strict-mode rules, or None: every object closed, every property required."""
    kinds = schema.get("type")
    is_object = kinds == "object" or (isinstance(kinds, list) and "object" in kinds) or "properties" in schema
    if is_object:
        if schema.get("additionalProperties") is not False:
            return f"{where} must set additionalProperties to false"
        properties = schema.get("properties") or {}
        missing = [name for name in properties if name not in (schema.get("required") or [])]
        if missing:
            return f"{where} must list every property in required (missing: {', '.join(missing)})"
        for name, sub in properties.items():
            if isinstance(sub, Mapping) and (problem := strict_problem(sub, f"property {name!r}")):
                return problem
    for key in ("items", "additionalItems"):
        if isinstance(schema.get(key), Mapping) and (problem := strict_problem(schema[key], f"{where}'s {key}")):
            return problem
    for key in ("anyOf", "allOf", "oneOf", "prefixItems"):
        for index, sub in enumerate(schema.get(key) or []):
            if isinstance(sub, Mapping) and (problem := strict_problem(sub, f"{where}'s {key}[{index}]")):
                return problem
    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            if isinstance(sub, Mapping) and (problem := strict_problem(sub, f"definition {name!r}")):
                return problem
    return None


# -- tools ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str | None
    parameters: Mapping[str, Any]
    strict: bool = False

    def listing(self) -> dict[str, Any]:
        item: dict[str, Any] = {"name": self.name}
        if self.description:
            item["description"] = self.description
        item["parameters"] = self.parameters
        return item


# An absent parameters schema means a function without arguments (OpenAI's rule).
NO_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}


def check_tools(tools: Sequence[Tool], param: str) -> None:
    """Names unique, each parameters schema enforceable (strict ones strict-compatible)."""
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        if not tool.name:
            raise BadRequest("a tool needs a name", param=f"{param}[{index}]")
        if tool.name in seen:
            raise BadRequest(f"two tools are named {tool.name!r}", param=f"{param}[{index}]")
        seen.add(tool.name)
        schema_grammar(tool.parameters, f"{param}[{index}].parameters", strict=tool.strict)


@dataclass(frozen=True)
class ToolPlan:
    """The tools of a request, which forms of answer are allowed, and how they are written."""

    tools: tuple[Tool, ...]
    # AUTO, REQUIRED, or the name of the one function that must be called.
    choice: str = AUTO
    # Several calls in one answer (OpenAI's parallel_tool_calls, default true).
    parallel: bool = True
    # GENERIC or HERMES (`tool_format`).
    format: str = GENERIC

    @property
    def named(self) -> str | None:
        return self.choice if self.choice not in (AUTO, REQUIRED) else None

    def _calls(self) -> tuple[Tool, ...]:
        return tuple(t for t in self.tools if t.name == self.named) if self.named else self.tools

    def _call_schema(self, tool: Tool) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": dict(tool.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }

    def envelope_schema(self) -> dict[str, Any]:
        """The JSON Schema of every answer allowed."""
        calls = [self._call_schema(t) for t in self._calls()]
        call = calls[0] if len(calls) == 1 else {"anyOf": calls}
        forms: list[dict[str, Any]] = []
        if self.parallel and not self.named:
            forms.append(_closed({CALLS: {"type": "array", "items": call, "minItems": 1}}))
        else:
            forms.append(_closed({CALL: call}))
        if self.choice == AUTO:
            forms.append(_closed({RESPONSE: {"type": "string"}}))
        return forms[0] if len(forms) == 1 else {"anyOf": forms}

    def grammar(self) -> Grammar | None:
        """What the answer must match. Hermes with `auto`: nothing (words, calls, or both, read afterwards)."""
        if self.format == GENERIC:
            return Grammar.json_schema(self.envelope_schema())
        if self.choice == AUTO:
            return None
        calls = [self._call_schema(t) for t in self._calls()]
        schema = closed_objects(calls[0] if len(calls) == 1 else {"anyOf": calls})
        schema["x-guidance"] = dict(JSON_OPTIONS)  # %json blocks compile as JSON schemas do
        block = f"{json.dumps(_HERMES_OPEN + chr(10))} %json {json.dumps(schema, ensure_ascii=False)} {json.dumps(chr(10) + _HERMES_CLOSE)}"
        start = 'start: call ("\\n" call)*' if self.parallel and not self.named else "start: call"
        return Grammar("lark", f"{start}\ncall: {block}")

    def prompt(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """The messages and the `tools` for the chat template: generic instructions, or the template's own rendering."""
        if self.format == GENERIC:
            return self.with_instructions(messages), None
        offered = self._calls()
        return messages, [{"type": "function", "function": t.listing()} for t in offered]

    def reader(self) -> EnvelopeReader | HermesReader:
        return EnvelopeReader() if self.format == GENERIC else HermesReader()

    def instructions(self) -> str:
        """What the system message says about the tools and the answer's form (docs/serving.md)."""
        listing = json.dumps([t.listing() for t in self._calls()], ensure_ascii=False)
        call = '{"name": <tool name>, "arguments": <its arguments, as JSON>}'
        if self.parallel and not self.named:
            calls = f'{{"{CALLS}": [{call}, ...]}} to call one or more tools'
        else:
            calls = f'{{"{CALL}": {call}}} to call a tool'
        if self.choice == AUTO:
            form = f'Answer with one JSON object: {calls}, or {{"{RESPONSE}": "<your answer>"}} to answer the user directly.'
        elif self.named:
            form = f"Call the tool {self.named} now. Answer with one JSON object: {calls}."
        else:
            form = f"Call a tool now. Answer with one JSON object: {calls}."
        return f"You can call these tools (each with a JSON Schema of its arguments):\n{listing}\n{form}"

    def with_instructions(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`messages` with the instructions added to the system message (a new one first if none)."""
        text = self.instructions()
        if messages and messages[0].get("role") == "system":
            first = dict(messages[0])
            first["content"] = f"{first.get('content') or ''}\n\n{text}".lstrip()
            return [first, *messages[1:]]
        return [{"role": "system", "content": text}, *messages]


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def history_message(
    role: str, content: str, calls: Sequence[tuple[str, str]] = (), tool_name: str | None = None, call_id: str | None = None, format: str = GENERIC
) -> dict[str, Any]:
    """A conversation message with earlier calls or a tool result, in the model's tool format.

    `calls` are (name, arguments JSON text) pairs; arguments that are not JSON are kept as a
    string. GENERIC writes calls as the envelope and results as `tool_response` objects;
    HERMES hands them to the template as `tool_calls` and `tool` messages, as it expects.
    """
    if format == HERMES:
        item: dict[str, Any] = {"role": role, "content": content}
        if calls:
            item["tool_calls"] = [{"type": "function", "function": {"name": name, "arguments": _json_or_text(arguments)}} for name, arguments in calls]
        if role == "tool" and tool_name:
            item["name"] = tool_name
        return item
    if calls:
        items = [{"name": name, "arguments": _json_or_text(arguments)} for name, arguments in calls]
        envelope = {CALLS: items} if len(items) > 1 else {CALL: items[0]}
        text = json.dumps(envelope, ensure_ascii=False)
        return {"role": role, "content": f"{content}\n{text}" if content else text}
    if role == "tool":
        result: dict[str, Any] = {"content": _json_or_text(content)}
        if tool_name:
            result = {"name": tool_name, **result}
        if call_id:
            result = {"id": call_id, **result}
        return {"role": "tool", "content": json.dumps({"tool_response": result}, ensure_ascii=False)}
    return {"role": role, "content": content}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


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
            opening = self.text.find(_HERMES_OPEN, self._read)
            if opening < 0:
                if not self.calls:
                    held = _partial_suffix(self.text, _HERMES_OPEN, self._read)
                    update.text += self._words(len(self.text) - held)
                return update
            if not self.calls:
                update.text += self._words(opening)
            closing = self.text.find(_HERMES_CLOSE, opening)
            if closing < 0:
                return update
            block = self.text[opening + len(_HERMES_OPEN) : closing]
            self._read = closing + len(_HERMES_CLOSE)
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
            arguments = _json_or_text(arguments)
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
            parser = _PrefixParser(self.text)
            parser.at = start
            words = parser._string((resume_at, self.content))
            update.text = words.decoded[len(self.content) :]
            self.content = words.decoded
            self._words = (start, words.resume_at) if words.end is None else None
            return update
        root = _PrefixParser(self.text).value()
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

    def _call(self, index: int, node: _Node | None, update: ReaderUpdate) -> None:
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


@dataclass
class _Node:
    kind: str  # object, array, string, literal
    start: int
    end: int | None = None  # one past the value's last character, None while it is incomplete
    items: list[tuple[str, _Node | None]] = field(default_factory=list)  # objects
    elements: list[_Node] = field(default_factory=list)  # arrays
    decoded: str = ""  # strings, as far as complete characters go
    resume_at: int = 0  # strings: the offset decoding reached


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_BLANKS = " \t\n\r"
_PLAIN = re.compile(r'[^"\\]+')
_LITERAL_END = _BLANKS + ",]}"


class _PrefixParser:
    """Parses a prefix of one JSON value: what is complete, and how far the rest goes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def _blanks(self) -> None:
        while self.at < len(self.text) and self.text[self.at] in _BLANKS:
            self.at += 1

    def value(self) -> _Node | None:
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

    def _object(self) -> _Node:
        return self._container("object", "}")

    def _array(self) -> _Node:
        return self._container("array", "]")

    def _container(self, kind: str, close: str) -> _Node:
        """An object or array, as far as it goes: items (objects) or elements (arrays) read so far."""
        node = _Node(kind, self.at)
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

    def _string(self, resume: tuple[int, str] | None = None) -> _Node:
        """A string from `self.at` (its opening quote); `resume`: (offset, text decoded up to it), to go on from there."""
        node = _Node("string", self.at)
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

    def _literal(self) -> _Node:
        node = _Node("literal", self.at)
        while self.at < len(self.text) and self.text[self.at] not in _LITERAL_END:
            self.at += 1
        if self.at < len(self.text):  # a delimiter follows: the number or word is whole
            node.end = self.at
        return node
