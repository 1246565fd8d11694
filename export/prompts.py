"""The fixed prompts and sentences every export is validated on.

They cover plain English, accented Latin text, CJK and emoji (multi-byte UTF-8 and
byte-fallback tokens), code, and one prompt well over 512 tokens so that long-context
attention is exercised, not only the first few hundred positions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParityPrompt:
    name: str
    text: str
    chat: bool  # rendered through the model's chat template when it has one


def _maintenance_report() -> str:
    """A long, varied, deterministic report (about 1,000 tokens for a 50k-vocabulary BPE)."""
    sites = ["Lyon", "Osaka", "Nairobi", "Quito", "Tromsø", "Adelaide", "Porto", "Gdańsk"]
    parts = ["pump", "valve", "compressor", "sensor", "belt", "filter", "relay", "bearing"]
    actions = ["replaced", "inspected", "recalibrated", "cleaned", "tightened", "lubricated"]
    lines = ["Quarterly maintenance report for the regional water network.", ""]
    for i in range(30):
        site, part, action = sites[i % len(sites)], parts[(i * 3) % len(parts)], actions[(i * 5) % len(actions)]
        hours = 2 + (i * 7) % 9
        pressure = 3.1 + ((i * 13) % 17) / 10
        lines.append(
            f"Entry {i + 1}: at the {site} station the technician {action} the {part} "
            f"in {hours} hours; outlet pressure afterwards was {pressure:.1f} bar."
        )
    return "\n".join(lines)


DECODER_PROMPTS: tuple[ParityPrompt, ...] = (
    ParityPrompt("capital", "What is the capital of France?", chat=True),
    ParityPrompt("french", "Écris deux phrases sur l'été à Montréal : le soleil, les terrasses, les festivals.", chat=True),
    ParityPrompt("cjk-emoji", "请用一句话介绍长城。Then name three animals of the ocean, each with an emoji 🌊🐠🐳.", chat=True),
    ParityPrompt("code", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', chat=False),
    ParityPrompt("long-report", _maintenance_report() + "\n\nSummarize the report above in two sentences.", chat=True),
)

EMBEDDING_SENTENCES: tuple[str, ...] = (
    "The cat sits on the mat.",
    "A man is playing a guitar on stage.",
    "Le café est prêt ; voulez-vous du sucre ?",
    "東京は日本の首都です。",
    "Weather today: ☀️ then 🌧️, bring an umbrella ☂️",
    "",
    "short",
    _maintenance_report(),  # longer than the encoder's limit: checks truncation matches
)
