"""Fill-in-the-middle prompts (`suffix` on OpenAI's completions and Ollama's generate), for vocabularies with FIM tokens."""

from __future__ import annotations

from api.errors import NotSupported
from api.models.registry import TextModel


def fim_prompt(generator: TextModel, prefix: str | tuple[int, ...], suffix: str) -> tuple[int, ...]:
    """A fill-in-the-middle prompt, prefix-suffix-middle: <fim_prefix>prefix<fim_suffix>suffix<fim_middle>.

    The model writes the middle; token-id prompts are the prefix as ids. A 400 for models whose
    vocabulary has no fill-in-the-middle tokens.
    """
    tokens = generator.fim_token_ids
    if tokens is None:
        raise NotSupported(
            "'suffix' (fill-in-the-middle) needs a model whose vocabulary has fill-in-the-middle tokens "
            "(<fim_prefix>, <fim_suffix>, <fim_middle>, or Qwen's <|fim_prefix|>…); this one has none", param="suffix",
        )
    prefix_token, suffix_token, middle_token = tokens
    head = tuple(generator.tokenize(""))  # the model's BOS, if it adds one
    prefix_ids = tuple(generator.tokenize(prefix, add_special_tokens=False)) if isinstance(prefix, str) else prefix
    suffix_ids = tuple(generator.tokenize(suffix, add_special_tokens=False))
    return (*head, prefix_token, *prefix_ids, suffix_token, *suffix_ids, middle_token)
