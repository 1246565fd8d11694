"""The wire models' decoding: body shapes, no coercion, `null` as absent, and error params from the path."""

from __future__ import annotations

import pytest

from api.errors import BadRequest, BodyTooLarge
from api.openai.bodies import ChatCompletionRequest, CompletionRequest
from api.wire import decode, encode, logit_bias_map
from runtime.sampling import SAMPLING_RANGES, SamplingParams

CHAT = b'"model": "m", "messages": [{"role": "user", "content": "Hi"}]'


def chat(extra: str = "") -> bytes:
    return b"{" + CHAT + (b", " + extra.encode() if extra else b"") + b"}"


def param_of(raw: bytes) -> str | None:
    with pytest.raises(BadRequest) as caught:
        decode(raw, ChatCompletionRequest)
    return caught.value.param


def test_body_shapes() -> None:
    assert decode(chat(), ChatCompletionRequest).messages[0].content == "Hi"
    for raw in (b"", b"  ", b"[1]", b"null", b"{", b"\xff", b"[" * 100_000, b'"text"', b'{"model": "m", "messages": [], "temperature": NaN}'):
        with pytest.raises(BadRequest):
            decode(raw, ChatCompletionRequest)
    with pytest.raises(BodyTooLarge):
        decode(chat(), ChatCompletionRequest, max_bytes=10)


def test_no_coercion_and_null_is_absent() -> None:
    assert decode(chat('"temperature": null, "seed": null'), ChatCompletionRequest).temperature is None
    assert param_of(chat('"n": true')) == "n"
    assert param_of(chat('"seed": "1"')) == "seed"
    assert param_of(chat('"max_tokens": 1.5')) == "max_tokens"
    assert param_of(chat('"temperature": 1e400')) == "temperature"
    assert decode(chat('"temperature": 1'), ChatCompletionRequest).temperature == 1.0


def test_params_are_validation_paths() -> None:
    assert param_of(b'{"model": "m", "messages": [{"role": "user"}, {"role": "user", "content": 3}]}') == "messages[1].content"
    assert param_of(b'{"model": "m", "messages": [{"content": "x"}]}') == "messages[0].role"
    assert param_of(b'{"messages": [{"role": "user"}]}') == "model"
    assert param_of(chat('"stream_options": {"include_usage": 1}')) == "stream_options.include_usage"
    assert param_of(chat('"logit_bias": {"5": 1, "7": "high"}')) == "logit_bias.7"
    # Keys are checked once logit_bias_type is known (token ids, or token strings): logit_bias_map.
    assert decode(chat('"logit_bias": {"x": 1}'), ChatCompletionRequest).logit_bias == {"x": 1}
    with pytest.raises(BadRequest) as caught:
        logit_bias_map({"5": 1.0, "x": 1.0})
    assert caught.value.param == "logit_bias" and "'x'" in str(caught.value)
    assert logit_bias_map({" 5 ": -1.0}) == {5: -1.0}
    assert param_of(chat('"messages": []')) == "messages"
    with pytest.raises(BadRequest) as caught:
        decode(b'{"model": "m", "prompt": [[1], [-2]]}', CompletionRequest)
    assert caught.value.param == "prompt[1][0]"


def test_ranges_are_the_runtimes() -> None:
    for name, allowed in SAMPLING_RANGES.items():
        if allowed.maximum is not None and name != "top_logprobs":
            assert param_of(chat(f'"{name}": {allowed.maximum + 1}')) == name
            with pytest.raises(Exception, match=name):
                SamplingParams(**{name: allowed.maximum + 1}).validate(100)


def test_encode_keeps_text_readable() -> None:
    assert encode({"a": "ça – 中文 😀", "b": None}) == '{"a":"ça – 中文 😀","b":null}'.encode()


def test_a_bad_map_value_before_broken_json_is_a_400_for_the_json() -> None:
    # The typed pass stops at the bad logit_bias value; naming its key needs the whole body,
    # which is not JSON (Python's json.dumps writes NaN): that is the 400, not a 500.
    with pytest.raises(BadRequest) as caught:
        decode(chat('"logit_bias": {"5": [1]}, "temperature": NaN'), ChatCompletionRequest)
    assert "not valid JSON" in caught.value.message
