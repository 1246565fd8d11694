"""Context limits: refuse with both numbers, or truncate keeping the prompt's end."""

from __future__ import annotations

import pytest

from runtime.errors import ContextLengthError, RequestError
from runtime.request import CONTEXT_TRUNCATE, fit_context


def test_a_fitting_prompt_is_untouched_and_max_tokens_defaults_to_the_room_left():
    fitted = fit_context(range(10), None, 100)
    assert fitted.ids == tuple(range(10)) and fitted.max_new_tokens == 90 and fitted.dropped == 0
    assert fit_context(range(10), 20, 100).max_new_tokens == 20


def test_a_prompt_longer_than_the_context_is_refused_with_both_numbers():
    with pytest.raises(ContextLengthError) as error:
        fit_context(range(150), None, 100)
    assert "150" in error.value.message and "100" in error.value.message
    assert error.value.status == 400 and error.value.code == "context_length_exceeded"


def test_max_tokens_beyond_the_room_is_refused_by_default():
    with pytest.raises(ContextLengthError) as error:
        fit_context(range(60), 50, 100)
    for number in ("100", "110", "60", "50"):
        assert number in error.value.message


def test_truncate_makes_room_for_max_tokens_by_dropping_the_oldest_prompt_tokens():
    fitted = fit_context(range(60), 50, 100, CONTEXT_TRUNCATE)
    assert fitted.ids == tuple(range(10, 60)) and fitted.max_new_tokens == 50 and fitted.dropped == 10


def test_truncate_keeps_the_end_of_an_overlong_prompt_and_its_bos():
    prompt = [1] + list(range(100, 250))
    fitted = fit_context(prompt, 30, 100, CONTEXT_TRUNCATE, bos_token_id=1)
    assert len(fitted.ids) == 70 and fitted.max_new_tokens == 30
    assert fitted.ids[0] == 1 and fitted.ids[1:] == tuple(range(181, 250))
    assert fitted.dropped == 81


def test_truncate_keeps_at_least_half_the_context_for_the_prompt():
    fitted = fit_context(range(300), 1000, 100, CONTEXT_TRUNCATE)
    assert fitted.ids == tuple(range(250, 300)) and fitted.max_new_tokens == 50


def test_prompt_truncate_len_applies_first():
    fitted = fit_context(range(50), 10, 100, prompt_truncate_len=20)
    assert fitted.ids == tuple(range(30, 50)) and fitted.dropped == 30


def test_unknown_policy_is_named():
    with pytest.raises(RequestError, match="context policy"):
        fit_context(range(5), 1, 100, "squeeze")
