"""Tool calling: how tools reach the prompt and what grammar the answer must follow.

**Tools.** A chat template that takes `tools` and writes `<tool_call>` blocks (the Hermes
format, `tool_format`) gets them itself; its answers are read by `HermesReader` (api/tools/readers.py), and with
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from api.errors import BadRequest
from api.generation.grammars import schema_grammar
from api.tools.json_prefix import json_or_text
from api.tools.readers import CALL, CALLS, HERMES_CLOSE, HERMES_OPEN, RESPONSE, EnvelopeReader, HermesReader
from runtime.grammar import JSON_OPTIONS, Grammar, closed_objects, lenient_options

AUTO, REQUIRED, NONE = "auto", "required", "none"
# How tools reach the model and its calls come back: the generic envelope, or the Hermes
# format of templates that take `tools` themselves (Qwen2.5/3, Hermes, SmolLM3, …).
GENERIC, HERMES = "generic", "hermes"



def tool_format(template_source: str | None) -> str:
    """HERMES for a chat template that renders `tools` and writes calls as <tool_call> blocks, else GENERIC."""
    if template_source and HERMES_OPEN in template_source and "tools" in template_source:
        return HERMES
    return GENERIC


# -- tools ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str | None
    parameters: Mapping[str, Any]
    strict: bool = False
    # Keywords of `parameters` the matcher cannot enforce are ignored rather than refused
    # (Anthropic's client tools: Anthropic constrains non-strict tools not at all).
    lenient: bool = False

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
        schema_grammar(tool.parameters, f"{param}[{index}].parameters", strict=tool.strict, lenient=tool.lenient)


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
        lenient = any(t.lenient for t in self._calls())
        if self.format == GENERIC:
            return Grammar.json_schema(self.envelope_schema(), lenient=lenient)
        if self.choice == AUTO:
            return None
        calls = [self._call_schema(t) for t in self._calls()]
        schema = closed_objects(calls[0] if len(calls) == 1 else {"anyOf": calls})
        schema["x-guidance"] = lenient_options() if lenient else dict(JSON_OPTIONS)  # %json blocks compile as JSON schemas do
        block = f"{json.dumps(HERMES_OPEN + chr(10))} %json {json.dumps(schema, ensure_ascii=False)} {json.dumps(chr(10) + HERMES_CLOSE)}"
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
            item["tool_calls"] = [{"type": "function", "function": {"name": name, "arguments": json_or_text(arguments)}} for name, arguments in calls]
        if role == "tool" and tool_name:
            item["name"] = tool_name
        return item
    if calls:
        items = [{"name": name, "arguments": json_or_text(arguments)} for name, arguments in calls]
        envelope = {CALLS: items} if len(items) > 1 else {CALL: items[0]}
        text = json.dumps(envelope, ensure_ascii=False)
        return {"role": role, "content": f"{content}\n{text}" if content else text}
    if role == "tool":
        result: dict[str, Any] = {"content": json_or_text(content)}
        if tool_name:
            result = {"name": tool_name, **result}
        if call_id:
            result = {"id": call_id, **result}
        return {"role": "tool", "content": json.dumps({"tool_response": result}, ensure_ascii=False)}
    return {"role": role, "content": content}


