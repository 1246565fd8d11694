"""Schemas and grammars a client asks the answer to follow, checked before anything runs.

`schema_grammar` and `text_grammar` turn what a client sent (OpenAI's `response_format`,
llama.cpp's `grammar`, Ollama's `format`) into a runtime `Grammar`, checked now, so a schema
or grammar the engine cannot enforce is a 400 naming the field before anything runs.
`strict_problem` says why a schema breaks OpenAI's strict-mode rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from api.errors import BadRequest
from runtime.grammar import Grammar, GrammarError


def _checked(grammar: Grammar, param: str) -> Grammar:
    try:
        grammar.check()
    except GrammarError as exc:
        raise BadRequest(str(exc), param=param) from exc
    return grammar


def schema_grammar(schema: object, param: str, strict: bool = False, lenient: bool = False) -> Grammar:
    """The grammar of JSON valid against `schema`; a 400 on `param` if it cannot be enforced
    (`lenient`: keywords that cannot be enforced are ignored instead)."""
    if not isinstance(schema, (dict, bool)):
        raise BadRequest("a JSON schema must be an object (or a boolean)", param=param)
    if strict and isinstance(schema, dict):
        problem = strict_problem(schema)
        if problem:
            raise BadRequest(f"this schema is not valid for strict mode: {problem}", param=param)
    return _checked(Grammar.json_schema(schema, lenient=lenient), param)


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


