"""Bodies of the extras: llama-cpp-python's and llama.cpp's tokenize/detokenize, and /health."""

from __future__ import annotations

from typing import ClassVar, Literal

from api.wire import UNSET, Body, Refused, Reply, TokenIds, UnsetType


class TokenizeRequest(Body, kw_only=True):
    """POST /tokenize, /extras/tokenize, /extras/tokenize/count. llama-cpp-python sends `input`, llama.cpp `content`."""

    model: str | None = None
    input: str | None = None
    content: str | None = None
    add_special: bool | None = None
    with_pieces: bool | None = None
    parse_special: bool | None = None

    refused: ClassVar[dict[str, Refused]] = {
        "with_pieces": Refused("token pieces are not returned; detokenize the ids instead", harmless=(False,)),
        "parse_special": Refused("special tokens written in the text are always read as text here", harmless=(False,)),
    }


class DetokenizeRequest(Body, kw_only=True):
    """POST /detokenize, /extras/detokenize."""

    model: str | None = None
    tokens: TokenIds | None = None


class Tokens(Reply, kw_only=True):
    tokens: list[int]


class TokenCount(Reply, kw_only=True):
    count: int


class Text(Reply, kw_only=True):
    text: str


class GeneratorStats(Reply, kw_only=True):
    """One text model's scheduler: its slots, the requests in them and waiting, steps and tokens so far,
    how often a prompt found its start in the prefix cache (and how many tokens it skipped), and with
    speculation (`speculation`: the method, null when off) its steps, the tokens they produced, the
    draft tokens checked and the ones accepted; of the requests in slots and waiting, the batch
    lines (background priority: `background_active`, `background_waiting`)."""

    slots: int
    active: int
    waiting: int
    steps: int
    tokens: int
    prefix_hits: int
    cached_tokens: int
    speculation: str | None
    speculative_steps: int
    speculative_tokens: int
    draft_tokens: int
    accepted_tokens: int
    background_active: int = 0
    background_waiting: int = 0


class EmbedderStats(Reply, kw_only=True):
    """One embedding model's encoder runs: calls answered, runs, inputs and padded tokens run,
    the most inputs in one run, and the runs that held inputs of more than one call (batching)."""

    calls: int
    runs: int
    rows: int
    padded_tokens: int
    largest_run: int
    shared_runs: int


class Health(Reply, kw_only=True):
    status: Literal["ok", "loading", "failed", "draining"]
    reason: str | UnsetType = UNSET
    models: list[str] | UnsetType = UNSET
    pid: int | UnsetType = UNSET
    generators: dict[str, GeneratorStats] | UnsetType = UNSET
    embedders: dict[str, EmbedderStats] | UnsetType = UNSET
