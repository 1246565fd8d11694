"""Request bodies: JSON objects read with a size bound, and fields read with their types checked.

Unknown fields are ignored (clients send many we do not use); a known field of the wrong
type is a 400 that names it. `null` reads as "not given", as OpenAI's server treats it.
Booleans are not numbers here, although Python thinks `True == 1`.
"""

from __future__ import annotations

import json
import math
from typing import Any, BinaryIO, Mapping

from api.errors import BadRequest, BodyTooLarge

_MISSING = object()


def read_json_object(stream: BinaryIO, content_length: int | None, max_bytes: int) -> dict[str, Any]:
    """Read and parse a request body that must be one JSON object of at most `max_bytes`."""
    if content_length is not None and content_length > max_bytes:
        raise BodyTooLarge(f"the request body has {content_length} bytes; the limit is {max_bytes}")
    raw = stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BodyTooLarge(f"the request body is larger than the limit of {max_bytes} bytes")
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadRequest("the request body nests too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Fields:
    """Typed access to a JSON object's fields; `prefix` names nested objects in errors."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _get(self, key: str, required: bool) -> Any:
        value = self.data.get(key)
        if value is None:
            if required:
                raise BadRequest(f"'{self.name(key)}' is required", param=self.name(key))
            return _MISSING
        return value

    def _wrong(self, key: str, expected: str, value: Any) -> BadRequest:
        return BadRequest(f"'{self.name(key)}' must be {expected}, not {_kind(value)}", param=self.name(key))

    def string(self, key: str, default: Any = None, required: bool = False) -> Any:
        value = self._get(key, required)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def boolean(self, key: str, default: Any = None) -> Any:
        value = self._get(key, False)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self._wrong(key, "a boolean", value)
        return value

    def integer(self, key: str, default: Any = None, minimum: int | None = None, maximum: int | None = None) -> Any:
        value = self._get(key, False)
        if value is _MISSING:
            return default
        # JSON has one number type: 3.0 is an acceptable integer, 3.5 is not.
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        self._check_range(key, value, minimum, maximum)
        return value

    def number(self, key: str, default: Any = None, minimum: float | None = None, maximum: float | None = None) -> Any:
        value = self._get(key, False)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._wrong(key, "a number", value)
        self._check_range(key, value, minimum, maximum)
        return float(value)

    def _check_range(self, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
        if minimum is not None and value < minimum:
            raise BadRequest(f"'{self.name(key)}' must be at least {minimum} (got {value})", param=self.name(key))
        if maximum is not None and value > maximum:
            raise BadRequest(f"'{self.name(key)}' must be at most {maximum} (got {value})", param=self.name(key))

    def obj(self, key: str) -> "Fields":
        """A nested object (an empty one when absent)."""
        value = self._get(key, False)
        if value is _MISSING:
            return Fields({}, f"{self.name(key)}.")
        if not isinstance(value, dict):
            raise self._wrong(key, "an object", value)
        return Fields(value, f"{self.name(key)}.")

    def array(self, key: str, required: bool = False, max_items: int | None = None) -> list[Any] | None:
        value = self._get(key, required)
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            raise self._wrong(key, "an array", value)
        if max_items is not None and len(value) > max_items:
            raise BadRequest(f"'{self.name(key)}' has {len(value)} entries; at most {max_items} are accepted", param=self.name(key))
        return value

    def strings(self, key: str, max_items: int | None = None) -> tuple[str, ...]:
        """A string or an array of strings (OpenAI's `stop`, Ollama's `stop`)."""
        value = self._get(key, False)
        if value is _MISSING:
            return ()
        if isinstance(value, str):
            items = [value]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            items = value
        else:
            raise self._wrong(key, "a string or an array of strings", value)
        if max_items is not None and len(items) > max_items:
            raise BadRequest(f"'{self.name(key)}' has {len(items)} entries; at most {max_items} are accepted", param=self.name(key))
        return tuple(item for item in items if item)

    def token_ids(self, key: str) -> tuple[int, ...]:
        """An array of non-negative integers."""
        value = self.array(key)
        if value is None:
            return ()
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
            raise BadRequest(f"'{self.name(key)}' must be an array of token ids (integers ≥ 0)", param=self.name(key))
        return tuple(value)

    def logit_bias(self, key: str) -> dict[int, float]:
        """OpenAI's logit_bias: an object from token id (as a string) to a number."""
        bias = self.obj(key)
        result: dict[int, float] = {}
        for token in bias.data:
            if not (isinstance(token, str) and token.strip().isdigit()):
                raise BadRequest(f"'{self.name(key)}' keys must be token ids, not {token!r}", param=self.name(key))
            result[int(token)] = bias.number(token, minimum=-100, maximum=100)
        return result
