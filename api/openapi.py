"""The OpenAPI 3.1 document of the server, served at `/openapi.json`.

It is built from plain dicts by the small helpers below, so it reads close to the JSON it
becomes. It describes what the code does, not what the upstream APIs allow:

- Request schemas list the fields the routes read, with the ranges they check. Unknown
  fields are ignored, so no request schema forbids additional properties, and `null` reads
  as "not given", so every optional field also accepts `null`.
- Response schemas require only the fields that are always sent, and allow `null` where
  the code can send it, so a schema-checking client finds every real answer valid.
- Errors come in two dialects: OpenAI's error object on `/v1/*` and the extras, Ollama's
  `{"error": "..."}` under `/api/*`.

The limits quoted (`n`, number of inputs) are those of the settings the document is built
for: the running server's, so a schema-driven client sees the limits it will meet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from api import __version__
from api.ollama.protocol import NEVER, OLLAMA_DEFAULTS
from api.openai.protocol import MAX_COMPLETION_LOGPROBS, OPENAI_DEFAULTS
from api.sampling_fields import LOGPROB_FLOOR, MAX_STOP_STRINGS
from api.settings import ServerSettings
from runtime.chat import ROLES
from runtime.events import FINISH_LENGTH, FINISH_STOP
from runtime.generation import CONTEXT_ERROR, CONTEXT_POLICIES
from runtime.manifest import TASKS
from runtime.sampling import MAX_TOP_LOGPROBS, SamplingParams

Schema = dict[str, Any]

_FINISH_REASONS = [FINISH_STOP, FINISH_LENGTH]
_HEALTH_STATES = ["ok", "loading", "failed", "draining"]
_JSON = "application/json"

# -- schema helpers ----------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: Iterable[str] = (), description: str | None = None, **extra: Any) -> Schema:
    """An object schema; `required` lists the fields that must be present."""
    schema: Schema = {"type": "object", "properties": properties}
    if required := list(required):
        schema["required"] = required
    if description:
        schema["description"] = description
    return {**schema, **extra}


def _nullable(schema: Schema) -> Schema:
    """`schema` or null."""
    schema = dict(schema)
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    kind = schema.get("type")
    if isinstance(kind, str):
        schema["type"] = [kind, "null"]
    elif isinstance(kind, list):
        schema["type"] = kind if "null" in kind else [*kind, "null"]
    elif "oneOf" in schema:
        schema["oneOf"] = [*schema["oneOf"], {"type": "null"}]
    else:
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


def _described(schema: Schema, description: str | None) -> Schema:
    return {**schema, "description": description} if description else schema


def _string(description: str | None = None, **extra: Any) -> Schema:
    return _described({"type": "string", **extra}, description)


def _integer(description: str | None = None, **extra: Any) -> Schema:
    return _described({"type": "integer", **extra}, description)


def _number(description: str | None = None, **extra: Any) -> Schema:
    return _described({"type": "number", **extra}, description)


def _boolean(description: str | None = None, **extra: Any) -> Schema:
    return _described({"type": "boolean", **extra}, description)


def _array(items: Schema, description: str | None = None, **extra: Any) -> Schema:
    return _described({"type": "array", "items": items, **extra}, description)


def _const(value: str) -> Schema:
    return {"type": "string", "const": value}


def _token_ids(description: str | None = None, **extra: Any) -> Schema:
    return _array(_integer(minimum=0), description, **extra)


def _string_or_strings(description: str, max_items: int | None = None) -> Schema:
    many = _array({"type": "string"}, **({"maxItems": max_items} if max_items else {}))
    return _nullable({"oneOf": [{"type": "string"}, many], "description": description})


# -- request fields shared by both dialects --------------------------------------------------


def _sampling_fields(defaults: SamplingParams) -> dict[str, Schema]:
    """The sampling controls (`api.sampling_fields.sampling_params`), with one dialect's defaults."""
    fields = {
        "temperature": _number("0 is greedy decoding.", minimum=0, maximum=100, default=defaults.temperature),
        "top_k": _integer("Keep the k most likely tokens; 0 or -1 disables.", minimum=-1, default=defaults.top_k),
        "top_p": _number("Nucleus sampling mass; 1 disables.", exclusiveMinimum=0, maximum=1, default=defaults.top_p),
        "min_p": _number(
            "Drop tokens less likely than min_p times the most likely one.", minimum=0, maximum=1, default=defaults.min_p
        ),
        "typical_p": _number(
            "Locally typical sampling mass; 1 disables.", exclusiveMinimum=0, maximum=1, default=defaults.typical_p
        ),
        "repeat_penalty": _number(
            "llama.cpp's repetition penalty; 1 disables.", exclusiveMinimum=0, default=defaults.repeat_penalty
        ),
        "repeat_last_n": _integer(
            "Tokens the repetition penalty looks back over; -1 the whole sequence, 0 none.",
            minimum=-1,
            default=defaults.repeat_last_n,
        ),
        "presence_penalty": _number(minimum=-2, maximum=2, default=defaults.presence_penalty),
        "frequency_penalty": _number(minimum=-2, maximum=2, default=defaults.frequency_penalty),
        "logit_bias": _obj(
            {},
            description="Token id (as a string) → value added to its logit. Ids must be inside the model's vocabulary.",
            propertyNames={"pattern": r"^\s*[0-9]+\s*$"},
            additionalProperties=_number(minimum=-100, maximum=100),
        ),
        "seed": _integer("Makes sampling repeatable; -1 or absent draws a random seed. Other negative values wrap modulo 2^64."),
    }
    return {name: _nullable(schema) for name, schema in fields.items()}


def _generation_extras(context_policy: Schema) -> dict[str, Schema]:
    """vLLM-style fields read from the top level of both dialects' generation requests."""
    fields = {
        "min_tokens": _integer(
            "End-of-sequence and stop strings are ignored until this many tokens exist.", minimum=0, default=0
        ),
        "stop_token_ids": _token_ids("Token ids that end the generation like end-of-sequence does."),
        "ignore_eos": _boolean("Keep generating through end-of-sequence tokens.", default=False),
        "context_length_exceeded_behavior": context_policy,
        "prompt_truncate_len": _integer("Keep at most this many prompt tokens (the last ones).", minimum=1),
        "skip_special_tokens": _boolean("Leave special tokens out of the text.", default=True),
    }
    return {name: _nullable(schema) for name, schema in fields.items()}


def _logprob_schemas() -> dict[str, Schema]:
    token = _obj(
        {
            "token": _string("The token's text (U+FFFD stands for an incomplete character)."),
            "logprob": _number(f"Natural log-probability; {LOGPROB_FLOOR} stands for minus infinity."),
            "bytes": _array(_integer(minimum=0, maximum=255), "The token's UTF-8 bytes."),
        },
        ["token", "logprob", "bytes"],
    )
    position = _obj(
        {
            **token["properties"],
            "top_logprobs": _array(_ref("TokenLogprob"), "The most likely tokens at this position, best first."),
        },
        ["token", "logprob", "bytes", "top_logprobs"],
        "The chosen token and the alternatives at its position.",
    )
    return {"TokenLogprob": token, "PositionLogprobs": position}


def _message_schema(extra: dict[str, Schema] | None = None) -> Schema:
    part = _obj(
        {"type": _const("text"), "text": _string()},
        ["type", "text"],
        "Only text parts are accepted; images, audio and files are a 400.",
    )
    return _obj(
        {
            "role": _string("`developer` is read as `system`.", enum=[*ROLES, "developer"]),
            "content": _nullable({"oneOf": [_string(), _array(part)]}),
            "name": _nullable(_string()),
            "tool_call_id": _nullable(_string()),
            "tool_calls": _nullable(_array({"type": "object"}, "Earlier tool calls, passed to the chat template.")),
            **(extra or {}),
        },
        ["role"],
        "One message of a conversation, rendered through the model's own chat template.",
    )


def _unsupported(what: str, schema: Schema | None = None) -> Schema:
    """A field accepted only when absent, null or empty: anything else is answered 400."""
    return _described(schema or {}, f"Not supported: {what}. Accepted only when absent, null or empty.")


# -- OpenAI schemas -------------------------------------------------------------------------


def _openai_generation_common(limits: ServerSettings) -> dict[str, Schema]:
    return {
        "model": _string("The name of a loaded text-generation model (see /v1/models)."),
        "n": _nullable(
            _integer(f"Choices to generate (at most {limits.max_n}).", minimum=1, maximum=limits.max_n, default=1)
        ),
        "stream": _nullable(_boolean("Answer as server-sent events.", default=False)),
        "stream_options": _nullable(
            _obj(
                {
                    "include_usage": _nullable(
                        _boolean("Send a last chunk with the usage; every other chunk has `usage: null`.", default=False)
                    )
                }
            )
        ),
        "stop": _string_or_strings("Strings that end the generation; they are not part of the output.", MAX_STOP_STRINGS),
        **_sampling_fields(OPENAI_DEFAULTS),
        **_generation_extras(
            _string(
                "What to do when the prompt and max_tokens do not fit the context.",
                enum=list(CONTEXT_POLICIES),
                default=CONTEXT_ERROR,
            )
        ),
    }


def _openai_schemas(limits: ServerSettings) -> dict[str, Schema]:
    at_most = f"at most {limits.max_inputs}"
    prompt = {
        "oneOf": [
            _string(),
            _array(_string(), minItems=1, maxItems=limits.max_inputs),
            _token_ids(minItems=1),
            _array(_token_ids(minItems=1), minItems=1, maxItems=limits.max_inputs),
        ],
        "description": f"A prompt, several prompts ({at_most}), token ids, or several lists of token ids.",
    }
    chat_request = _obj(
        {
            **_openai_generation_common(limits),
            "messages": _array(_ref("ChatMessage"), minItems=1, maxItems=limits.max_messages),
            "max_tokens": _nullable(
                _integer(
                    f"Most tokens to generate (at most {limits.max_tokens}); absent: until a stop, the context is full or "
                    f"{limits.max_tokens} tokens.",
                    minimum=0,
                    maximum=limits.max_tokens,
                )
            ),
            "max_completion_tokens": _nullable(
                _integer("The newer name of max_tokens; it wins when both are given.", minimum=0, maximum=limits.max_tokens)
            ),
            "logprobs": _nullable(_boolean("Return the log-probability of each generated token.", default=False)),
            "top_logprobs": _nullable(
                _integer(
                    "Alternatives returned per token; needs `logprobs: true`.", minimum=0, maximum=MAX_TOP_LOGPROBS, default=0
                )
            ),
            "response_format": _nullable(
                _obj(
                    {
                        "type": _nullable(
                            _string("Only text: JSON output needs constrained decoding.", enum=["text"], default="text")
                        )
                    }
                )
            ),
            "tools": _unsupported("tool calling (unless tool_choice is 'none')", {"type": ["array", "null"]}),
            "tool_choice": _described({}, "With 'none', `tools` is accepted and ignored."),
            "functions": _unsupported("function calling", {"type": ["array", "null"]}),
            "audio": _unsupported("audio output"),
        },
        ["model", "messages"],
    )
    completion_request = _obj(
        {
            **_openai_generation_common(limits),
            "prompt": prompt,
            "max_tokens": _nullable(_integer(f"At most {limits.max_tokens}.", minimum=0, maximum=limits.max_tokens, default=16)),
            "logprobs": _nullable(
                _integer(
                    "Return log-probabilities with this many alternatives per token.", minimum=0, maximum=MAX_COMPLETION_LOGPROBS
                )
            ),
            "echo": _nullable(_boolean("Put the prompt before each choice's text (not together with logprobs).", default=False)),
            "best_of": _nullable(_integer("Only the value of n is supported.", minimum=1)),
            "suffix": _unsupported("fill-in-the-middle", {"type": ["string", "null"]}),
        },
        ["model", "prompt"],
    )
    embedding_request = _obj(
        {
            "model": _string("The name of a loaded embedding model."),
            "input": {**prompt, "description": f"A text, several texts ({at_most}), token ids, or several lists of token ids."},
            "encoding_format": _nullable(_string(enum=["float", "base64"], default="float")),
            "dimensions": _nullable(_integer("Only the model's own dimension is supported.", minimum=1)),
            "user": _nullable(_string()),
            "truncate": _nullable(_boolean("Cut inputs longer than the model's limit instead of refusing them.", default=False)),
        },
        ["model", "input"],
    )
    usage = _obj(
        {"prompt_tokens": _integer(minimum=0), "completion_tokens": _integer(minimum=0), "total_tokens": _integer(minimum=0)},
        ["prompt_tokens", "completion_tokens", "total_tokens"],
    )
    chat_logprobs = _obj({"content": _array(_ref("PositionLogprobs")), "refusal": {"type": "null"}}, ["content", "refusal"])
    completion_logprobs = _obj(
        {
            "tokens": _array(_string()),
            "token_logprobs": _array(_number()),
            "top_logprobs": _nullable(
                _array(_obj({}, additionalProperties=_number()), "Per token: alternative → log-probability.")
            ),
            "text_offset": _array(_integer(minimum=0), "Each token's character offset in the choice's text."),
        },
        ["tokens", "token_logprobs", "top_logprobs", "text_offset"],
    )
    head = {
        "id": _string(),
        "created": _integer("Unix seconds."),
        "model": _string(),
        "system_fingerprint": _string("`fp_` and the start of the engine's digest."),
    }
    head_fields = ["id", "object", "created", "model", "system_fingerprint", "choices"]
    finish = _string(enum=_FINISH_REASONS)

    chat_choice = _obj(
        {
            "index": _integer(minimum=0),
            "message": _obj(
                {"role": _const("assistant"), "content": _string(), "refusal": {"type": "null"}}, ["role", "content", "refusal"]
            ),
            "logprobs": _nullable(_ref("ChatLogprobs")),
            "finish_reason": finish,
        },
        ["index", "message", "logprobs", "finish_reason"],
    )
    chat_chunk_choice = _obj(
        {
            "index": _integer(minimum=0),
            "delta": _obj(
                {"role": _const("assistant"), "content": _string()}, description="The first chunk of a choice has the role."
            ),
            "logprobs": _nullable(_ref("ChatLogprobs")),
            "finish_reason": _nullable(finish),
        },
        ["index", "delta", "logprobs", "finish_reason"],
    )
    completion_choice = _obj(
        {
            "text": _string(),
            "index": _integer(minimum=0),
            "logprobs": _nullable(_ref("CompletionLogprobs")),
            "finish_reason": finish,
        },
        ["text", "index", "logprobs", "finish_reason"],
    )
    completion_chunk_choice = {
        **completion_choice,
        "properties": {**completion_choice["properties"], "finish_reason": _nullable(finish)},
    }
    chunk_usage = _nullable(_ref("Usage"))
    chunk_usage["description"] = "With stream_options.include_usage: null on every chunk but the last, whose `choices` is empty."

    embedding = _obj(
        {
            "object": _const("embedding"),
            "index": _integer(minimum=0),
            "embedding": {
                "oneOf": [_array(_number()), _string("Little-endian float32 values, base64-encoded.", contentEncoding="base64")]
            },
        },
        ["object", "index", "embedding"],
    )
    model = _obj(
        {
            "id": _string(),
            "object": _const("model"),
            "created": _integer("Unix seconds: when the engine was exported."),
            "owned_by": _string(),
            "task": _string(enum=list(TASKS)),
            "context_length": _integer(minimum=0),
            "precision": _string(),
            "execution_provider": _nullable(_string("The ONNX Runtime execution provider the engine runs on.")),
        },
        ["id", "object", "created", "owned_by", "task", "context_length", "precision", "execution_provider"],
    )
    return {
        "ChatMessage": _message_schema(),
        "ChatCompletionRequest": chat_request,
        "CompletionRequest": completion_request,
        "EmbeddingRequest": embedding_request,
        "Usage": usage,
        "ChatLogprobs": chat_logprobs,
        "CompletionLogprobs": completion_logprobs,
        "ChatCompletionChoice": chat_choice,
        "ChatCompletion": _obj(
            {
                **head,
                "object": _const("chat.completion"),
                "choices": _array(_ref("ChatCompletionChoice")),
                "usage": _ref("Usage"),
            },
            [*head_fields, "usage"],
        ),
        "ChatCompletionChunkChoice": chat_chunk_choice,
        "ChatCompletionChunk": _obj(
            {
                **head,
                "object": _const("chat.completion.chunk"),
                "choices": _array(_ref("ChatCompletionChunkChoice")),
                "usage": chunk_usage,
            },
            head_fields,
        ),
        "CompletionChoice": completion_choice,
        "Completion": _obj(
            {**head, "object": _const("text_completion"), "choices": _array(_ref("CompletionChoice")), "usage": _ref("Usage")},
            [*head_fields, "usage"],
        ),
        "CompletionChunkChoice": completion_chunk_choice,
        "CompletionChunk": _obj(
            {**head, "object": _const("text_completion"), "choices": _array(_ref("CompletionChunkChoice")), "usage": chunk_usage},
            head_fields,
        ),
        "Embedding": embedding,
        "EmbeddingList": _obj(
            {
                "object": _const("list"),
                "data": _array(_ref("Embedding")),
                "model": _string(),
                "usage": _obj(
                    {"prompt_tokens": _integer(minimum=0), "total_tokens": _integer(minimum=0)}, ["prompt_tokens", "total_tokens"]
                ),
            },
            ["object", "data", "model", "usage"],
        ),
        "Model": model,
        "ModelList": _obj({"object": _const("list"), "data": _array(_ref("Model"))}, ["object", "data"]),
    }


# -- Ollama schemas -------------------------------------------------------------------------


def _ollama_generation_common() -> dict[str, Schema]:
    return {
        "model": _string("The name of a loaded text-generation model; a ':latest' tag is accepted."),
        "options": _nullable(_ref("OllamaOptions")),
        "stream": _nullable(_boolean("Answer as newline-delimited JSON.", default=True)),
        "logprobs": _nullable(_boolean("Return the log-probability of each generated token.", default=False)),
        "top_logprobs": _nullable(_integer("Alternatives returned per token.", minimum=0, maximum=MAX_TOP_LOGPROBS, default=0)),
        "truncate": _nullable(_boolean("Cut a prompt longer than the context at its start; false refuses it.", default=True)),
        "keep_alive": _described({}, "Ignored: models stay loaded for the server's lifetime."),
        "format": _described({}, "Not supported: JSON output needs constrained decoding. Accepted only when absent, null or ''."),
        "think": _nullable(_boolean("Only false: these models have no thinking mode.", enum=[False])),
        "images": _unsupported("this engine reads text only", {"type": ["array", "null"]}),
        "tools": _unsupported("tool calling", {"type": ["array", "null"]}),
        "template": _unsupported("custom prompt templates", {"type": ["string", "null"]}),
        "suffix": _unsupported("fill-in-the-middle", {"type": ["string", "null"]}),
        **_generation_extras(_string("Read but overridden: `truncate` decides.")),
    }


def _ollama_schemas(limits: ServerSettings) -> dict[str, Schema]:
    options = _obj(
        {
            **_sampling_fields(OLLAMA_DEFAULTS),
            "num_predict": _nullable(
                _integer(
                    f"Most tokens to generate, at most {limits.max_tokens}; -1 or -2: until a stop, the context is full or "
                    f"{limits.max_tokens} tokens.",
                    minimum=-2,
                    maximum=limits.max_tokens,
                    default=-1,
                )
            ),
            "num_ctx": _nullable(_integer("Use a smaller context than the model's.", minimum=1)),
            "stop": _string_or_strings("Strings that end the generation; they are not part of the output."),
        },
        description="Sampling controls with Ollama's defaults. Other options (num_thread, num_gpu, ...) are ignored.",
    )
    generate_request = _obj(
        {
            **_ollama_generation_common(),
            "prompt": _nullable(_string("Empty (with no context) only loads the model.", default="")),
            "system": _nullable(_string("A system message for the chat template.")),
            "raw": _nullable(_boolean("Send the prompt as it is, without the chat template.", default=False)),
            "context": _nullable(_token_ids("The `context` of an earlier answer, to continue that conversation.")),
        },
        ["model"],
    )
    chat_request = _obj(
        {
            **_ollama_generation_common(),
            "messages": _nullable(
                _array(_ref("OllamaMessage"), "None (or an empty list) only loads the model.", maxItems=limits.max_messages)
            ),
        },
        ["model"],
    )
    timings = {
        "total_duration": _integer("Nanoseconds.", minimum=0),
        "load_duration": _integer("Nanoseconds.", minimum=0),
        "prompt_eval_count": _integer(minimum=0),
        "prompt_eval_duration": _integer("Nanoseconds.", minimum=0),
        "eval_count": _integer(minimum=0),
        "eval_duration": _integer("Nanoseconds.", minimum=0),
    }
    answer = {
        "model": _string(),
        "created_at": _string(format="date-time"),
        "done": _boolean("False on every streamed line but the last."),
        "done_reason": _string("`load`: an empty prompt only loaded the model.", enum=[*_FINISH_REASONS, "load"]),
        **timings,
        "logprobs": _array(_ref("PositionLogprobs"), "With `logprobs: true`."),
    }
    generate_response = _obj(
        {**answer, "response": _string(), "context": _token_ids("The conversation so far, to send back in the next request.")},
        ["model", "created_at", "response", "done"],
        "The whole answer, or one line of a stream; the last (`done: true`) carries done_reason, context and the timings.",
    )
    chat_response = _obj(
        {**answer, "message": _obj({"role": _const("assistant"), "content": _string()}, ["role", "content"])},
        ["model", "created_at", "message", "done"],
        "The whole answer, or one line of a stream; the last (`done: true`) carries done_reason and the timings.",
    )
    details = _obj(
        {
            "parent_model": _string(),
            "format": _string(),
            "family": _string(),
            "families": _array(_string()),
            "parameter_size": _string(),
            "quantization_level": _string(),
        },
        ["parent_model", "format", "family", "families", "parameter_size", "quantization_level"],
    )
    listed = {
        "name": _string(),
        "model": _string(),
        "size": _integer("Bytes.", minimum=0),
        "digest": _string(),
        "details": _ref("OllamaModelDetails"),
    }
    tag = _obj(
        {**listed, "modified_at": _string(format="date-time")}, ["name", "model", "modified_at", "size", "digest", "details"]
    )
    running = _obj(
        {
            **listed,
            "expires_at": _string(f"Always {NEVER}: models stay loaded.", format="date-time"),
            "size_vram": _integer("Bytes on an accelerator (0 on the CPU).", minimum=0),
            "context_length": _integer(minimum=0),
        },
        ["name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"],
    )
    show_fields = ["license", "modelfile", "parameters", "template", "details", "model_info", "capabilities", "modified_at"]
    show = _obj(
        {
            "license": _string(),
            "modelfile": _string(),
            "parameters": _string(),
            "template": _string("The model's Jinja chat template (empty if it has none)."),
            "details": _ref("OllamaModelDetails"),
            "model_info": _obj({}, description="`general.*`, `<family>.*` and `appliance.*` facts about the engine."),
            "capabilities": _array(_string(enum=["completion", "embedding"])),
            "modified_at": _string(format="date-time"),
        },
        show_fields,
    )
    return {
        "OllamaOptions": options,
        "OllamaMessage": _message_schema({"images": _unsupported("this engine reads text only", {"type": ["array", "null"]})}),
        "OllamaGenerateRequest": generate_request,
        "OllamaGenerateResponse": generate_response,
        "OllamaChatRequest": chat_request,
        "OllamaChatResponse": chat_response,
        "OllamaEmbedRequest": _obj(
            {
                "model": _string("The name of a loaded embedding model."),
                "input": {
                    "oneOf": [_string(), _array(_string(), maxItems=limits.max_inputs)],
                    "description": f"A text or several (at most {limits.max_inputs}); an empty list embeds nothing.",
                },
                "truncate": _nullable(
                    _boolean("Cut inputs longer than the model's limit instead of refusing them.", default=True)
                ),
                "dimensions": _nullable(_integer("Only the model's own dimension is supported.", minimum=1)),
                "options": _nullable(_obj({}, description="Ignored.")),
                "keep_alive": _described({}, "Ignored."),
            },
            ["model", "input"],
        ),
        "OllamaEmbedResponse": _obj(
            {
                "model": _string(),
                "embeddings": _array(_array(_number())),
                "total_duration": _integer("Nanoseconds.", minimum=0),
                "load_duration": _integer("Nanoseconds.", minimum=0),
                "prompt_eval_count": _integer(minimum=0),
            },
            ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"],
        ),
        "OllamaEmbeddingsRequest": _obj(
            {
                "model": _string("The name of a loaded embedding model."),
                "prompt": _nullable(_string("An empty prompt gives an empty vector.", default="")),
                "options": _nullable(_obj({}, description="Ignored.")),
            },
            ["model"],
        ),
        "OllamaEmbeddingsResponse": _obj({"embedding": _array(_number())}, ["embedding"]),
        "OllamaModelDetails": details,
        "OllamaTag": tag,
        "OllamaTags": _obj({"models": _array(_ref("OllamaTag"))}, ["models"]),
        "OllamaRunningModel": running,
        "OllamaPs": _obj({"models": _array(_ref("OllamaRunningModel"))}, ["models"]),
        "OllamaShowRequest": _obj(
            {"model": _nullable(_string()), "name": _nullable(_string("The older name of `model`."))},
            description="Names the model in `model` or (older clients) `name`.",
            anyOf=[{"required": ["model"]}, {"required": ["name"]}],
        ),
        "OllamaShow": show,
        "OllamaVersion": _obj(
            {"version": _string("The Ollama API version this server follows."), "appliance": _string("This server's version.")},
            ["version", "appliance"],
        ),
    }


# -- extras and errors ----------------------------------------------------------------------


def _extras_schemas() -> dict[str, Schema]:
    model = _nullable(_string("The model whose tokenizer to use; may be left out when the server has one text model."))
    return {
        "TokenizeRequest": _obj(
            {
                "model": model,
                "input": _nullable(_string("The text (llama-cpp-python's name).")),
                "content": _nullable(_string("The text (llama.cpp's name), read when `input` is absent.")),
                "add_special": _nullable(_boolean("Add the model's special tokens (such as BOS).", default=True)),
            },
            description="The text goes in `input` or `content`.",
            anyOf=[{"required": ["input"]}, {"required": ["content"]}],
        ),
        "TokenizeResponse": _obj({"tokens": _token_ids()}, ["tokens"]),
        "TokenCountResponse": _obj({"count": _integer(minimum=0)}, ["count"]),
        "DetokenizeRequest": _obj(
            {"model": model, "tokens": _nullable(_token_ids("Token ids inside the model's vocabulary.", default=[]))}
        ),
        "DetokenizeResponse": _obj({"text": _string()}, ["text"]),
        "Health": _obj(
            {
                "status": _string(enum=_HEALTH_STATES),
                "models": _array(_string(), "The models served (when ready)."),
                "reason": _string("Why the server is not ready."),
                "pid": _integer("The worker process that answered (each has its own engines)."),
                "generators": _described(
                    {
                        "type": "object",
                        "additionalProperties": _obj(
                            {
                                "slots": _integer(minimum=1),
                                "active": _integer("Requests holding a slot.", minimum=0),
                                "waiting": _integer("Requests queued for a slot.", minimum=0),
                                "steps": _integer("Batched decode steps so far.", minimum=0),
                                "tokens": _integer("Tokens generated so far.", minimum=0),
                            },
                            ["slots", "active", "waiting", "steps", "tokens"],
                        ),
                    },
                    "This worker's schedulers, by text model.",
                ),
            },
            ["status"],
        ),
        "OpenAIError": _obj(
            {
                "error": _obj(
                    {
                        "message": _string(),
                        "type": _string("invalid_request_error, server_error, service_unavailable, ..."),
                        "param": _nullable(_string("The request field at fault.")),
                        "code": _nullable(_string()),
                    },
                    ["message", "type", "param", "code"],
                )
            },
            ["error"],
        ),
        "OllamaError": _obj({"error": _string()}, ["error"]),
    }


# -- operations -----------------------------------------------------------------------------

_ERROR_DESCRIPTIONS = {
    400: "The body is not a JSON object, or a field is missing, of the wrong type, out of range or not supported.",
    401: "The server has API keys and the request carries none, or not one of them (`Authorization: Bearer <key>`).",
    404: "No model of that name is loaded.",
    413: "The request body is larger than the server's limit (--max-body-bytes; 16 MiB by default).",
    429: "Every slot of the engine is generating and its queue is full (--queue-limit); retry after `Retry-After` seconds.",
    500: "An unexpected error; the server log has the details.",
    503: "The engines are still loading or failed to load, the server is shutting down, or the request waited its whole "
    "time limit for a slot.",
    504: "The request ran past the server's time limit per request (--request-timeout).",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": _string()}
}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer realm=\"appliance\"`, and why the key was refused.", "schema": _string()}}
_ERROR_HEADERS = {401: _WWW_AUTHENTICATE, 429: _RETRY_AFTER, 503: _RETRY_AFTER}
_WITH_BODY = (400, 401, 404, 413, 429, 500, 503, 504)
_WITHOUT_BODY = (401, 500, 503)


def _content(schema: Schema, media_type: str = _JSON) -> dict[str, Any]:
    return {media_type: {"schema": schema}}


def _errors(dialect: str, statuses: Iterable[int]) -> dict[str, Any]:
    """Error responses in one dialect's error schema (`OpenAIError` or `OllamaError`)."""
    responses: dict[str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {"description": _ERROR_DESCRIPTIONS[status], "content": _content(_ref(dialect))}
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        responses[str(status)] = response
    return responses


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    ok: dict[str, Any],
    errors: dict[str, Any],
    request: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        operation["description"] = description
    if request:
        operation["requestBody"] = {"required": True, "content": _content(_ref(request))}
    operation["responses"] = {"200": ok, **errors}
    return operation


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": _content(_ref(schema))}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": _content(_string(), "text/plain")}


def _sse(whole: str, chunk: str, description: str) -> dict[str, Any]:
    """200 of a route that answers JSON, or server-sent events with `stream: true`."""
    stream = (
        f"With `stream: true`: server-sent events. Each event is a `data:` line holding one {chunk} as JSON; the stream "
        "ends with `data: [DONE]`. An error after the stream began arrives as one `data:` line holding an OpenAIError, "
        "then `data: [DONE]`."
    )
    event = _obj(
        {
            "data": {
                "anyOf": [
                    _const("[DONE]"),
                    {"contentMediaType": _JSON, "contentSchema": _ref(chunk)},
                    {"contentMediaType": _JSON, "contentSchema": _ref("OpenAIError")},
                ]
            }
        },
        ["data"],
        description="One server-sent event (keep-alive comments, lines starting with ':', carry none).",
    )
    return {
        "description": f"{description} {stream}",
        "content": {_JSON: {"schema": _ref(whole)}, "text/event-stream": {"schema": event}},
    }


def _ndjson(schema: str, description: str) -> dict[str, Any]:
    """200 of an Ollama route that answers JSON, or newline-delimited JSON unless `stream: false`."""
    stream = (
        f"Unless `stream` is false: newline-delimited JSON, one {schema} per line, the last with `done: true`. An error "
        'after the stream began arrives as one line `{"error": "..."}`.'
    )
    return {
        "description": f"{description} {stream}",
        "content": {_JSON: {"schema": _ref(schema)}, "application/x-ndjson": {"schema": _string(stream)}},
    }


def _openai_paths() -> dict[str, Any]:
    errors = _errors("OpenAIError", _WITH_BODY)
    return {
        "/v1/chat/completions": {
            "post": _operation(
                "createChatCompletion",
                "Continue a conversation",
                "OpenAI",
                _sse("ChatCompletion", "ChatCompletionChunk", "The completion (`stream` false or absent)."),
                errors,
                "ChatCompletionRequest",
                "The messages are rendered through the model's chat template. Streams open each choice with a chunk holding "
                "`delta.role` and close it with a chunk holding `finish_reason`.",
            )
        },
        "/v1/completions": {
            "post": _operation(
                "createCompletion",
                "Continue a prompt (legacy completions)",
                "OpenAI",
                _sse("Completion", "CompletionChunk", "The completion (`stream` false or absent)."),
                errors,
                "CompletionRequest",
                "Several prompts give n choices each, numbered prompt by prompt.",
            )
        },
        "/v1/embeddings": {
            "post": _operation(
                "createEmbedding",
                "Embed texts or token ids",
                "OpenAI",
                _ok("One vector per input.", "EmbeddingList"),
                errors,
                "EmbeddingRequest",
            )
        },
        "/v1/models": {
            "get": _operation(
                "listModels",
                "List the loaded models",
                "OpenAI",
                _ok("Every model.", "ModelList"),
                _errors("OpenAIError", _WITHOUT_BODY),
            )
        },
        "/v1/models/{model_id}": {
            "parameters": [
                {"name": "model_id", "in": "path", "required": True, "schema": _string(), "description": "A model's name."}
            ],
            "get": _operation(
                "retrieveModel",
                "Describe one model",
                "OpenAI",
                _ok("The model.", "Model"),
                _errors("OpenAIError", (401, 404, 500, 503)),
            ),
        },
    }


def _ollama_paths() -> dict[str, Any]:
    errors = _errors("OllamaError", _WITH_BODY)
    listing = _errors("OllamaError", _WITHOUT_BODY)
    return {
        "/api/generate": {
            "post": _operation(
                "ollamaGenerate",
                "Continue a prompt (Ollama)",
                "Ollama",
                _ndjson("OllamaGenerateResponse", "With `stream: false`: the whole answer."),
                errors,
                "OllamaGenerateRequest",
                "The prompt is wrapped in the chat template (with `system`) unless `raw` is true. "
                "An empty prompt without context only loads the model (`done_reason: load`).",
            )
        },
        "/api/chat": {
            "post": _operation(
                "ollamaChat",
                "Continue a conversation (Ollama)",
                "Ollama",
                _ndjson("OllamaChatResponse", "With `stream: false`: the whole answer."),
                errors,
                "OllamaChatRequest",
                "No messages only loads the model (`done_reason: load`).",
            )
        },
        "/api/embed": {
            "post": _operation(
                "ollamaEmbed",
                "Embed texts (Ollama)",
                "Ollama",
                _ok("One vector per input.", "OllamaEmbedResponse"),
                errors,
                "OllamaEmbedRequest",
            )
        },
        "/api/embeddings": {
            "post": _operation(
                "ollamaEmbeddings",
                "Embed one text (Ollama's older route)",
                "Ollama",
                _ok("The vector; inputs longer than the model's limit are cut.", "OllamaEmbeddingsResponse"),
                errors,
                "OllamaEmbeddingsRequest",
            )
        },
        "/api/tags": {
            "get": _operation("ollamaTags", "List the models (Ollama)", "Ollama", _ok("Every model.", "OllamaTags"), listing)
        },
        "/api/show": {
            "post": _operation(
                "ollamaShow",
                "Describe one model (Ollama)",
                "Ollama",
                _ok("The model.", "OllamaShow"),
                errors,
                "OllamaShowRequest",
            )
        },
        "/api/ps": {
            "get": _operation(
                "ollamaPs",
                "List the running models (Ollama)",
                "Ollama",
                _ok("Every model (all stay loaded).", "OllamaPs"),
                listing,
            )
        },
        "/api/version": {
            "get": _operation("ollamaVersion", "Versions (Ollama)", "Ollama", _ok("The versions.", "OllamaVersion"), listing)
        },
    }


def _extras_paths() -> dict[str, Any]:
    errors = _errors("OpenAIError", _WITH_BODY)
    plain = _errors("OpenAIError", _WITHOUT_BODY)

    def tokenize(operation_id: str, summary: str) -> dict[str, Any]:
        return {
            "post": _operation(
                operation_id, summary, "Extras", _ok("The token ids.", "TokenizeResponse"), errors, "TokenizeRequest"
            )
        }

    def detokenize(operation_id: str) -> dict[str, Any]:
        return {
            "post": _operation(
                operation_id, "Token ids to text", "Extras", _ok("The text.", "DetokenizeResponse"), errors, "DetokenizeRequest"
            )
        }

    health = {"200": _ok("Every engine is loaded and warm.", "Health")}
    unhealthy = {
        "description": "Loading, failed or shutting down; `reason` says which.",
        "content": _content(_ref("Health")),
        "headers": _RETRY_AFTER,
    }
    bare = {"description": "As GET, without a body."}
    document = {"description": "The OpenAPI document.", "content": _content({"type": "object"})}
    return {
        "/tokenize": tokenize("tokenize", "Text to token ids (llama-cpp-python's route)"),
        "/detokenize": detokenize("detokenize"),
        "/extras/tokenize": tokenize("extrasTokenize", "Text to token ids"),
        "/extras/tokenize/count": {
            "post": _operation(
                "extrasTokenizeCount",
                "Count a text's tokens",
                "Extras",
                _ok("The count.", "TokenCountResponse"),
                errors,
                "TokenizeRequest",
            )
        },
        "/extras/detokenize": detokenize("extrasDetokenize"),
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Readiness",
                "tags": ["Extras"],
                "security": [],
                "responses": {**health, "503": unhealthy},
            },
            "head": {
                "operationId": "healthHead",
                "summary": "Readiness, status only",
                "tags": ["Extras"],
                "security": [],
                "responses": {"200": bare, "503": {**bare, "headers": _RETRY_AFTER}},
            },
        },
        "/metrics": {
            "get": _operation("metrics", "Prometheus metrics", "Extras", _text("Prometheus' text exposition format."), plain)
        },
        "/openapi.json": {"get": _operation("openapi", "This document", "Extras", document, plain)},
        "/": {
            "get": _operation(
                "root", "Is the server up?", "Extras", _text("One line saying the server runs (Ollama clients probe it)."), plain
            ),
            "head": {
                "operationId": "rootHead",
                "summary": "Is the server up? (status only)",
                "tags": ["Extras"],
                "responses": {
                    "200": bare,
                    "401": {"description": _ERROR_DESCRIPTIONS[401], "headers": _WWW_AUTHENTICATE},
                    "503": {"description": "The server is shutting down.", "headers": _RETRY_AFTER},
                },
            },
        },
    }


def openapi_document(limits: ServerSettings = ServerSettings(), authenticated: bool = False) -> dict[str, Any]:
    """The whole OpenAPI 3.1.0 document for a server with `limits`: every route, its request and response schemas.

    With `authenticated` (the server has API keys) every operation but the health check requires the bearer key.
    """
    security = {"security": [{"apiKey": []}]} if authenticated else {}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "appliance",
            "version": __version__,
            "summary": "ONNX Runtime inference server with OpenAI- and Ollama-compatible APIs.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "OpenAI", "description": "OpenAI's API under /v1; errors are OpenAI error objects."},
            {"name": "Ollama", "description": 'Ollama\'s API under /api; errors are `{"error": "..."}`.'},
            {"name": "Extras", "description": "Tokenizer, health, metrics and this document; errors are OpenAI error objects."},
        ],
        **security,
        "paths": {**_openai_paths(), **_ollama_paths(), **_extras_paths()},
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the server's API keys (--api-key-file); required on every route but /health when the "
                    "server has keys.",
                }
            },
            "schemas": {**_logprob_schemas(), **_openai_schemas(limits), **_ollama_schemas(limits), **_extras_schemas()},
        },
    }
