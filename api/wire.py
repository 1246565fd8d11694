"""The typed wire contract: msgspec models decoded from the body's bytes, and what they share.

Every request body of every dialect is one `Body` subclass (`api/openai/bodies.py`,
`api/ollama/bodies.py`, `api/extras/bodies.py`). Decoding validates types and ranges in one
pass over the bytes; a failure is a 400 whose `param` is the field's path in the body
(`messages[2].content`, `stream_options.include_usage`, `logit_bias.5`). The same classes
generate the OpenAPI document (`api/openapi.py`) and, for answers, encode the bytes.

Conventions of every request model:

- Unknown fields are ignored (OpenAI clients send extras); `null` reads as "not given".
- Booleans are not numbers and numbers are not strings: no coercion.
- A field of the seed APIs that this server cannot honour yet is declared all the same,
  with a `Refused` entry in the class's `refused` table: sending it (with anything but
  its harmless values) is a 400 that names it and says why, never silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from api.errors import BadRequest, BodyTooLarge, NotSupported
from runtime.sampling import SAMPLING_RANGES, Range

__all__ = ["UNSET", "UnsetType", "Body", "Refused", "Reply", "decode", "bounded", "encode", "refuse_unsupported"]

B = TypeVar("B", bound="Body")

# Most stop strings per request (OpenAI allows 4; llama.cpp-style servers accept more).
MAX_STOP_STRINGS = 32

# Why a refused field is refused, where both dialects have the field.
TEXT_ONLY = "this engine reads text only"


@dataclass(frozen=True)
class Refused:
    """A seed-API field this server cannot honour yet: why, and the values that ask for nothing."""

    why: str
    # Values that mean "nothing asked" (e.g. tool_choice "none"); null, "", [] and {} always do.
    harmless: tuple[object, ...] = ()
    # Or a test of the value, for values that are objects (response_format {"type": "text"}).
    allows: Callable[[object], bool] | None = None
    # An empty object still asks (OpenAI's web_search_options {} turns search on).
    empty_asks: bool = False


class Body(msgspec.Struct, kw_only=True):
    """A request body. Subclasses declare their fields; `refused` lists the fields refused for now."""

    refused: ClassVar[dict[str, Refused]] = {}


class Reply(msgspec.Struct, kw_only=True):
    """An answer body (or one stream frame); fields set to UNSET are left out of the JSON."""


def bounded(name: str) -> Meta:
    """msgspec constraints of one sampling control, from the runtime's own table of ranges."""
    r: Range = SAMPLING_RANGES[name]
    if r.exclusive_minimum:
        return Meta(gt=r.minimum, le=r.maximum, description=r.description)
    return Meta(ge=r.minimum, le=r.maximum, description=r.description)


# Shared field types ------------------------------------------------------------------------

TokenId = Annotated[int, Meta(ge=0)]
TokenIds = list[TokenId]
StopStrings = str | Annotated[list[str], Meta(max_length=MAX_STOP_STRINGS)]
Temperature = Annotated[float, bounded("temperature")]
# vLLM spells "off" as -1, so the wire accepts it and the runtime reads 0.
TopK = Annotated[int, Meta(ge=-1, description="Keep the k most likely tokens; 0 or -1 disables.")]
TopP = Annotated[float, bounded("top_p")]
MinP = Annotated[float, bounded("min_p")]
TypicalP = Annotated[float, bounded("typical_p")]
RepeatPenalty = Annotated[float, bounded("repeat_penalty")]
RepeatLastN = Annotated[int, bounded("repeat_last_n")]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
# Keys are token ids ("42"), or token strings with llama.cpp's `logit_bias_type: "tokens"`:
# `logit_bias_map` checks them, knowing which.
LogitBias = dict[
    Annotated[str, Meta(description='A token id such as "42" (a token string with logit_bias_type "tokens").')],
    Annotated[float, Meta(ge=-100, le=100)],
]
_TOKEN_ID = re.compile(r"^\s*[0-9]+\s*$")


def stop_tuple(value: str | list[str] | None) -> tuple[str, ...]:
    """`stop` as the runtime takes it: a tuple of non-empty strings."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    return tuple(item for item in items if item)


def logit_bias_map(value: dict[str, float] | None, param: str = "logit_bias") -> dict[int, float]:
    """logit_bias keyed by token id; a 400 naming the first key that is not one."""
    for token in value or {}:
        if not _TOKEN_ID.match(token):
            raise BadRequest(
                f"'{param}' keys must be token ids such as \"42\" (got {token!r}); to name tokens by their text, "
                f"send logit_bias_type \"tokens\"", param=param,
            )
    return {int(token): bias for token, bias in (value or {}).items()}


# Decoding ----------------------------------------------------------------------------------

_decoders: dict[type, msgspec.json.Decoder] = {}
_LOCATION = re.compile(r" - at (?:`key` in )?`\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


def decode(raw: bytes, model: type[B], max_bytes: int | None = None) -> B:
    """The body `raw` as a `model`, validated; a 400 (or 413) naming the field otherwise."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise BodyTooLarge(f"the request body is larger than the limit of {max_bytes} bytes")
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders[model] = msgspec.json.Decoder(model)
    try:
        body = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc), raw) from None
    except msgspec.DecodeError as exc:
        raise _syntax_error(str(exc), raw) from None
    refuse_unsupported(body)
    return body


def _syntax_error(detail: str, raw: bytes) -> BadRequest:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return BadRequest("the request body is not UTF-8 text")
    return BadRequest(f"the request body is not valid JSON: {detail}")


def _validation_error(detail: str, raw: bytes) -> BadRequest:
    """msgspec's message, with its `$.a.b[0]` location turned into our `param` spelling."""
    match = _LOCATION.search(detail)
    path = match.group("path") if match else ""
    detail = detail[: match.start()] if match else detail
    missing = _MISSING.match(detail)
    if missing:
        path = f"{path}.{missing.group('field')}"
    if "[...]" in path:
        try:
            path = _name_dict_key(path, raw)
        except msgspec.DecodeError as exc:  # the typed pass stopped at the bad value, before the body's broken JSON (a NaN, say)
            return _syntax_error(str(exc), raw)
    param = path.lstrip(".") or None
    if param is None and detail.startswith("Expected `object`"):
        return BadRequest(f"the request body must be a JSON object: {detail[0].lower()}{detail[1:]}")
    if missing:
        return BadRequest(f"'{param}' is required", param=param)
    return BadRequest(f"'{param}': {detail[0].lower()}{detail[1:]}" if param else detail, param=param)


_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _name_dict_key(path: str, raw: bytes) -> str:
    """msgspec writes a bad dict value's location as `[...]`; name the first key whose value is not a number."""
    node: object = msgspec.json.decode(raw)
    out = ""
    for match in _SEGMENT.finditer(path):
        name, index = match.group(1), match.group(2)
        if name is not None and isinstance(node, dict):
            node, out = node.get(name), f"{out}.{name}"
        elif index == "..." and isinstance(node, dict):
            # The values we type as dicts are numbers (logit_bias); a number out of range names no key.
            key = next((k for k, v in node.items() if isinstance(v, bool) or not isinstance(v, (int, float))), None)
            if key is None:
                return out
            node, out = node.get(key), f"{out}.{key}"
        elif index is not None and index != "..." and isinstance(node, list):
            node, out = node[int(index)], f"{out}[{index}]"
        else:
            return out
    return out


def _asks_for_something(value: object, refusal: Refused) -> bool:
    if value is None or value is UNSET:
        return False
    if value in ("", [], {}) and not (refusal.empty_asks and value == {}):
        return False
    if refusal.allows is not None and refusal.allows(value):
        return False
    return not any(type(value) is type(h) and value == h for h in refusal.harmless)


def refuse_unsupported(body: msgspec.Struct, prefix: str = "") -> None:
    """A 400 for the first field of `body` (or of a nested body) this server cannot honour yet."""
    for name, refusal in type(body).refused.items() if isinstance(body, Body) else ():
        value = getattr(body, name)
        if _asks_for_something(value, refusal):
            raise NotSupported(f"'{prefix}{name}' is not supported yet: {refusal.why}", param=f"{prefix}{name}")
    for name in body.__struct_fields__:
        value = getattr(body, name)
        if isinstance(value, Body):
            refuse_unsupported(value, f"{prefix}{name}.")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Body):
                    refuse_unsupported(item, f"{prefix}{name}[{index}].")


# Encoding ----------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()


def encode(value: object) -> bytes:
    """Compact JSON, non-ASCII text kept readable (UTF-8), as both peers send it."""
    return _encoder.encode(value)
