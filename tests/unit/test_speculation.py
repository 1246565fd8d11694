"""Prompt lookup drafts (runtime/speculation.py) and the speculation settings."""

from __future__ import annotations

import pytest

from api.settings import ServerSettings, draft_count, speculation
from runtime.settings import GeneratorSettings
from runtime.speculation import PromptLookup


def test_a_draft_continues_the_latest_earlier_occurrence_of_the_last_tokens():
    lookup = PromptLookup([1, 2, 3, 4, 5, 6, 9, 2, 3, 4, 7, 8, 0, 2, 3, 4], draft_tokens=3)
    # The last three tokens (2, 3, 4) occurred twice before: the latest one was followed by 7, 8, 0.
    assert lookup.draft(3) == [7, 8, 0]
    assert lookup.draft(1) == [7]
    assert lookup.draft(0) == []


def test_the_longest_match_wins_and_shorter_matches_draft_fewer_tokens():
    lookup = PromptLookup([5, 6, 7, 8, 1, 7, 9, 9, 9], draft_tokens=4, max_ngram=3)
    lookup.append(6)
    lookup.append(7)  # ... 6, 7: a two-token match (5, 6, 7 → 8, 1, ...) beats the one-token 7 → 9
    assert lookup.draft(4) == [8, 1]  # two tokens for a two-token match
    lookup.append(3)  # ... 7, 3: nothing ends in 3 before, and 3 never occurred
    assert lookup.draft(4) == []
    lookup.append(1)  # 3, 1 unknown; 1 alone was followed by 7
    assert lookup.draft(4) == [7]


def test_generated_tokens_join_the_text_drafts_come_from():
    lookup = PromptLookup([10, 11], draft_tokens=4)
    for token in (12, 13, 14, 10, 11, 12):
        lookup.append(token)
    assert lookup.tokens == [10, 11, 12, 13, 14, 10, 11, 12]
    assert lookup.draft(4) == [13, 14, 10, 11]  # the prompt's 10, 11, 12 were followed by 13, 14, ...


def test_a_draft_may_run_into_the_tokens_just_generated():
    lookup = PromptLookup([1, 2, 1, 2, 1, 2], draft_tokens=4)
    assert lookup.draft(4) == [1, 2]  # the latest earlier (1, 2, 1) … ends where the text ends


def test_drafter_arguments_are_checked():
    with pytest.raises(ValueError):
        PromptLookup([1], draft_tokens=0)
    with pytest.raises(ValueError):
        PromptLookup([1], max_ngram=0)


def test_speculation_settings():
    assert GeneratorSettings().speculate is None  # off by default
    with pytest.raises(ValueError, match="speculate must be one of ngram"):
        GeneratorSettings(speculate="eagle")
    with pytest.raises(ValueError, match="between 1 and 16"):
        GeneratorSettings(draft_tokens=17)
    with pytest.raises(ValueError, match="at least 1"):
        GeneratorSettings(speculate_max_streams=0)
    assert speculation(" NGRAM ") == "ngram" and speculation("off") == "off"
    assert speculation("draft") == "draft"
    with pytest.raises(ValueError, match="use off or ngram or draft"):
        speculation("eagle")
    assert draft_count("8") == 8
    with pytest.raises(ValueError, match="at most 16"):
        draft_count("32")
    generator = ServerSettings(speculate="ngram", draft_tokens=6, speculate_max_streams=2).generator_settings()
    assert (generator.speculate, generator.draft_tokens, generator.speculate_max_streams) == ("ngram", 6, 2)
    assert ServerSettings().generator_settings().speculate is None


def test_a_draft_engine_goes_with_speculate_draft_and_nothing_else(tmp_path):
    from appliance.cli import _speculation_problem

    with pytest.raises(ValueError, match="needs a draft engine"):
        GeneratorSettings(speculate="draft")
    with pytest.raises(ValueError, match="needs a draft engine"):
        GeneratorSettings(speculate="ngram", draft_engine="engines/draft")
    assert GeneratorSettings(speculate="draft", draft_engine="engines/draft").draft_engine == "engines/draft"
    assert "needs --draft-engine" in (_speculation_problem(ServerSettings(speculate="draft")) or "")
    assert "only applies with --speculate draft" in (_speculation_problem(ServerSettings(draft_engine=str(tmp_path))) or "")
    assert "no engine there" in (_speculation_problem(ServerSettings(speculate="draft", draft_engine=str(tmp_path))) or "")
    (tmp_path / "manifest.json").write_text("{}")
    assert _speculation_problem(ServerSettings(speculate="draft", draft_engine=str(tmp_path))) is None
    assert ServerSettings(speculate="draft", draft_engine=str(tmp_path)).generator_settings().draft_engine == str(tmp_path)
    assert ServerSettings().generator_settings().draft_engine is None
