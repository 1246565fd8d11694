"""Prompts for the speculative-decoding phase: copying work, where the answer repeats its input
(extraction into JSON from a given passage, a code edit, answers that quote their source), and
free chat, where it does not. bench/serving.py runs both without and with `--speculate ngram`."""

PASSAGE = (
    "The Riverside Community Garden opened in April 2019 on the corner of Elm Street and Harbor Road. "
    "It was founded by Maria Lopez, a retired schoolteacher, and Daniel Okafor, who runs the hardware store next door. "
    "The garden has 42 raised beds, a tool shed donated by Okafor Hardware, and a rainwater tank that holds 3,000 liters. "
    "Members pay 25 dollars a year; the money buys seeds, compost and repairs. "
    "Every Saturday at 9 a.m. volunteers meet at the shed to weed the shared herb beds and water the seedlings. "
    "In 2023 the garden won the city's Green Neighborhood Award, and its tomatoes were served at the Harbor Road Festival."
)

CODE = """def total_price(items, tax_rate):
    total = 0
    for item in items:
        if item.quantity <= 0:
            continue
        total = total + item.price * item.quantity
    total = total * (1 + tax_rate)
    return round(total, 2)


def cheapest_item(items):
    best = None
    for item in items:
        if best is None or item.price < best.price:
            best = item
    return best
"""

COPY_PROMPTS = (
    f"Read the passage and return a JSON object with the keys name, role and year for each founder and fact it states, "
    f"copying the wording exactly.\n\nPassage: {PASSAGE}",
    f"Add type hints to this Python code and return the complete code.\n\n```python\n{CODE}```",
    f"Using only the passage below, answer: when and where do volunteers meet, and what did the garden win? "
    f"Quote the sentences from the passage that support your answer.\n\nPassage: {PASSAGE}",
)

FREE_PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain briefly why the sky is blue during the day.",
    "List five unusual uses for a paperclip and say why each works.",
)
