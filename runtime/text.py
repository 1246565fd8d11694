"""From token ids to text while streaming: detokenizing, stop strings, token bytes.

* `IncrementalDetokenizer` turns one token at a time into text deltas. A token can end in
  the middle of a UTF-8 character (byte-level vocabularies split emoji and CJK characters
  across tokens), so it decodes a short window of recent tokens and emits only what that
  window adds once the window no longer ends in an incomplete character (U+FFFD). Joined,
  the deltas are exactly the text of decoding all the ids at once.
* `StopMatcher` finds stop strings in the streamed text, however the tokens split them. It
  holds back any tail of the text that could be the start of a stop string, never emits
  the stop string itself, and releases held text when it turns out not to be a stop.
* `TokenBytes` gives the raw bytes of single tokens, for log-probability records (OpenAI's
  `bytes` field), which a text decode of a lone partial-character token cannot give.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from tokenizers import Tokenizer

_REPLACEMENT = "\ufffd"
# Tokens of prompt context decoded along with the first generated ones, so that a first
# token's leading space (SentencePiece's "▁") decodes as it would mid-text.
_CONTEXT_TOKENS = 4


class IncrementalDetokenizer:
    """Streams text for token ids as they are generated."""

    def __init__(self, tokenizer: Tokenizer, context_ids: Sequence[int] = (), skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids = [int(i) for i in context_ids[-_CONTEXT_TOKENS:]] if context_ids else []
        # Text of ids[_prefix:_read] has been emitted (or is context); ids[_read:] not yet.
        self._prefix = 0
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=self._skip) if ids else ""

    def add(self, token_id: int) -> str:
        """The text `token_id` completes; empty while a character is still incomplete."""
        self._ids.append(int(token_id))
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(self._prefix_text) or text.endswith(_REPLACEMENT):
            return ""
        delta = text[len(self._prefix_text) :]
        # Slide the window: the ids just read become the next window's context.
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix : self._read])
        return delta

    def flush(self) -> str:
        """Whatever is still held at the end (a genuinely incomplete character decodes as U+FFFD)."""
        text = self._decode(self._ids[self._prefix :])
        delta = text[len(self._prefix_text) :] if len(text) > len(self._prefix_text) else ""
        # Everything is emitted now; what follows (if anything) is decoded after these ids.
        self._ids = self._ids[-_CONTEXT_TOKENS:]
        self._prefix, self._read = 0, len(self._ids)
        self._prefix_text = self._decode(self._ids)
        return delta


class StopMatcher:
    """Cuts the streamed text at the first stop string, holding back possible beginnings."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(dict.fromkeys(s for s in stops if s))
        self._held = ""

    @property
    def held(self) -> str:
        return self._held

    def feed(self, text: str, active: bool = True) -> tuple[str, str | None]:
        """Text safe to emit now, and the stop string matched (None if none yet).

        With `active` False (e.g. before min_tokens) no stop is matched and nothing is held.
        """
        buffer = self._held + text
        self._held = ""
        if not self.stops or not active:
            return buffer, None
        found: tuple[int, str] | None = None
        for stop in self.stops:
            at = buffer.find(stop)
            if at >= 0 and (found is None or at < found[0] or (at == found[0] and len(stop) > len(found[1]))):
                found = (at, stop)
        if found is not None:
            return buffer[: found[0]], found[1]
        hold = max((self._overlap(buffer, stop) for stop in self.stops), default=0)
        self._held = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], None

    @staticmethod
    def _overlap(text: str, stop: str) -> int:
        """Length of the longest end of `text` that is a proper beginning of `stop`."""
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                return size
        return 0

    def flush(self) -> str:
        """Held text, released because generation ended without a stop."""
        held, self._held = self._held, ""
        return held


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-printable-character map, inverted: character -> byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenBytes:
    """Raw bytes of single tokens for a tokenizer (byte-level BPE, SentencePiece or plain)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        config = json.loads(tokenizer.to_str())
        self._byte_level = "ByteLevel" in json.dumps(config.get("decoder"))
        self._alphabet = _byte_level_alphabet() if self._byte_level else {}
        self._special = {token["id"] for token in config.get("added_tokens", []) if token.get("special")}
        self._cache: dict[int, bytes] = {}

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special tokens (their bytes are their names)."""
        return frozenset(self._special)

    def __call__(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is None:
            cached = self._cache[token_id] = self.compute(token_id)
        return cached

    def compute(self, token_id: int) -> bytes:
        """The bytes of `token_id`, not kept (for a pass over the whole vocabulary)."""
        piece = self._tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self._special:
            return piece.encode()
        if self._byte_level and all(ch in self._alphabet for ch in piece):
            return bytes(self._alphabet[ch] for ch in piece)
        fallback = _BYTE_FALLBACK.match(piece)
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        return piece.replace("\u2581", " ").encode()

    def text(self, token_id: int) -> str:
        """The token as text; bytes that are not whole characters become U+FFFD."""
        return self(token_id).decode("utf-8", errors="replace")
