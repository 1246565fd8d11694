"""Chat messages → prompt text, through the engine's own Jinja chat template.

Templates are the ones models ship in their tokenizer configuration (or GGUF header), written
for transformers' renderer; we render them the same way: a sandboxed Jinja environment with
`trim_blocks` and `lstrip_blocks`, the `raise_exception` and `strftime_now` helpers, a
`tojson` filter that keeps non-ASCII characters, and `bos_token` / `eos_token` as strings.
The rendered text is tokenized without adding special tokens (the template writes them),
as transformers' `apply_chat_template` does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runtime.errors import ChatTemplateError, EngineLoadError, RequestError

ROLES = ("system", "user", "assistant", "tool")
# OpenAI's newer name for the system role; templates only know "system". Keyed by object:
# it is looked up with whatever the client sent as the role, before that is checked.
_ROLE_ALIASES: dict[object, str] = {"developer": "system"}


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def flatten_content(content: Any, index: int) -> str:
    """A message's content as text: a string, or OpenAI content parts of type text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, Mapping) and part.get("type") in ("image_url", "input_audio", "file", "image"):
                raise RequestError(
                    f"messages[{index}]: content of type {part['type']!r} is not supported; this engine reads text only",
                    param="messages",
                )
            else:
                raise RequestError(f"messages[{index}]: each content part must be {{'type': 'text', 'text': str}}", param="messages")
        return "\n".join(texts)
    raise RequestError(f"messages[{index}]: content must be a string or a list of content parts", param="messages")


def normalise_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check roles and flatten content; keep tool fields (tool_calls, tool_call_id, name)."""
    if not messages:
        raise RequestError("messages must hold at least one message", param="messages")
    result = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(f"messages[{index}] must be an object", param="messages")
        role = _ROLE_ALIASES.get(message.get("role"), message.get("role"))
        if role not in ROLES:
            raise RequestError(
                f"messages[{index}].role must be one of {', '.join(ROLES)} (got {message.get('role')!r})", param="messages"
            )
        item = {key: value for key, value in message.items() if key in ("name", "tool_calls", "tool_call_id")}
        item["role"] = role
        item["content"] = flatten_content(message.get("content"), index)
        result.append(item)
    return result


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and the special-token strings it may refer to."""

    source: str
    template: jinja2.Template
    bos_token: str
    eos_token: str

    @classmethod
    def compile(cls, source: str, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            template = environment.from_string(source)
        except jinja2.TemplateError as exc:
            raise EngineLoadError(f"the engine's chat template does not compile: {exc}") from exc
        return cls(source, template, bos_token, eos_token)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt text for `messages`, ending with the assistant's turn opener when asked."""
        normalised = normalise_messages(messages)
        try:
            return self.template.render(
                messages=normalised,
                add_generation_prompt=add_generation_prompt,
                tools=list(tools) if tools else None,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template rejected these messages: {exc}") from exc
        except (TypeError, KeyError, AttributeError, IndexError) as exc:
            raise ChatTemplateError(f"the model's chat template failed on these messages: {exc!r}") from exc
