"""Request bodies: size limits, JSON errors and typed fields."""

from __future__ import annotations

import io

import pytest

from api.body import Fields, read_json_object
from api.errors import BadRequest, BodyTooLarge
from api.settings import ServerSettings


def test_read_json_object_limits_and_shapes() -> None:
    assert read_json_object(io.BytesIO(b'{"a": 1}'), 8, 100) == {"a": 1}
    with pytest.raises(BodyTooLarge):
        read_json_object(io.BytesIO(b"{}"), 1000, 100)  # the declared length is enough to refuse
    with pytest.raises(BodyTooLarge):
        read_json_object(io.BytesIO(b'{"a": "' + b"x" * 200 + b'"}'), None, 100)  # chunked: counted while reading
    for raw in (b"", b"  ", b"[1]", b"null", b"{", b"\xff", b"[" * 100_000):
        with pytest.raises(BadRequest):
            read_json_object(io.BytesIO(raw), len(raw), 1_000_000)


def test_fields_types() -> None:
    f = Fields({"i": 3.0, "half": 3.5, "flag": True, "n": None, "s": "x", "nan": float("nan"), "nested": {"b": 1}})
    assert f.integer("i") == 3 and f.integer("n", 7) == 7 and f.string("missing", "d") == "d"
    for call in (lambda: f.integer("half"), lambda: f.integer("flag"), lambda: f.number("flag"), lambda: f.number("nan"), lambda: f.boolean("i")):
        with pytest.raises(BadRequest):
            call()
    with pytest.raises(BadRequest) as nested:
        f.obj("nested").boolean("b")
    assert nested.value.param == "nested.b"
    with pytest.raises(BadRequest) as required:
        f.string("n", required=True)
    assert required.value.param == "n"
    with pytest.raises(BadRequest):
        Fields({"x": 5}).integer("x", maximum=4)


def test_fields_strings_token_ids_and_bias() -> None:
    f = Fields({"one": "a", "many": ["a", "", "b"], "bad": ["a", 1], "ids": [1, 2], "neg": [-1], "bias": {"5": 10, " 7": -1.5}})
    assert f.strings("one") == ("a",) and f.strings("many") == ("a", "b") and f.strings("absent") == ()
    assert f.token_ids("ids") == (1, 2) and f.logit_bias("bias") == {5: 10.0, 7: -1.5}
    for call in (lambda: f.strings("bad"), lambda: f.token_ids("neg"), lambda: f.strings("many", max_items=2)):
        with pytest.raises(BadRequest):
            call()


def test_settings_from_env_round_trip() -> None:
    settings = ServerSettings(port=9001, warm=False, drain_timeout_s=2.5)
    assert ServerSettings.from_env(settings.to_env()) == settings
    with pytest.raises(ValueError, match="APPLIANCE_PORT"):
        ServerSettings.from_env({"APPLIANCE_PORT": "eighty"})
