"""Reference text for measuring a quantized engine against the fp32 engine.

Teacher forcing: both engines read the same text, and at every position we compare their
next-token distributions (does the most likely token agree? how far apart are they, in
KL divergence?). Greedy continuations of a few prompts say little — one early flip changes
everything after it — so the figure that decides whether an int4 engine is good enough is
measured here, over well over 2,000 tokens of varied text: explanatory prose, instructions,
a story, a conversation in the model's chat format, code, French and German, numbers.

The passages were written for this project; they are fixed so that figures stay comparable
between exports.
"""

from __future__ import annotations

REFERENCE_PASSAGES: tuple[tuple[str, str], ...] = (
    (
        "printing-press",
        """The printing press changed Europe faster than almost any invention before it. Around 1440, Johannes Gutenberg, a goldsmith from Mainz, combined several ideas that already existed: the screw press used for wine and olive oil, oil-based inks that stuck to metal, and, most importantly, movable type cast from an alloy of lead, tin and antimony. Each letter was cast many times in a hand mould, so that a compositor could set a page, print hundreds of copies, and then break the page apart and reuse every letter for the next one.

Before the press, a book was copied by hand. A skilled scribe might finish a Bible in a year or more, and every copy introduced new mistakes. Within fifty years of Gutenberg's first Bible, printers were working in more than two hundred cities, and historians estimate that some twenty million volumes had been produced. Prices fell, and reading spread from monasteries and universities to merchants, craftsmen and their families.

The consequences were not only cultural. Scientists could now compare identical copies of the same table or diagram, which made it possible to build on each other's work instead of correcting copying errors. Governments printed laws and forms; reformers printed pamphlets by the thousand. Not everyone welcomed the change. Some scholars complained that cheap books would spread error as easily as truth, an argument that has been repeated for every new medium since.""",
    ),
    (
        "bread-recipe",
        """How to bake a simple loaf of bread

Ingredients: 500 grams of strong white flour, 10 grams of salt, 7 grams of dried yeast, 350 millilitres of lukewarm water, and a tablespoon of olive oil.

1. Mix the flour and the salt in a large bowl. Add the yeast on the other side of the bowl, because salt that touches the yeast directly can slow it down.
2. Pour in most of the water and the oil, and stir with a wooden spoon until a rough dough forms. Add the rest of the water a little at a time if there is still dry flour at the bottom.
3. Tip the dough onto a lightly floured surface and knead it for about ten minutes. It is ready when it feels smooth and springs back when you press it with a finger.
4. Put the dough back in the bowl, cover it with a damp towel, and leave it somewhere warm for one to two hours, until it has doubled in size.
5. Knock the air out, shape it into a ball or a long loaf, and place it on a baking tray. Let it rise again for about forty minutes while the oven heats to 220 °C.
6. Bake for 30 to 35 minutes. The loaf is done when it is golden brown and sounds hollow when you tap the bottom. Let it cool on a rack for at least half an hour before slicing it, or the inside will be gummy.""",
    ),
    (
        "lighthouse-story",
        """The lighthouse keeper had not spoken to anyone for eleven days when the boat appeared. At first it was only a dark mark between the waves, and Mara thought it was driftwood, or one of the seals that slept on the rocks below the tower. Then she saw the oars.

She ran down the spiral staircase, one hundred and twelve steps, and out onto the jetty. The wind pulled at her coat. In the boat sat a boy of perhaps fourteen, soaked through, rowing with the stubborn rhythm of someone who had been rowing for hours.

"You can't land here," she shouted. "The current will push you onto the rocks. Go around to the north side!"

The boy looked up, nodded once, and turned the boat. It took him another twenty minutes. When he finally reached the small beach on the north side, Mara was waiting with a blanket and a thermos of tea.

"The supply ship isn't coming," he said, before she could ask anything. "The engine broke in the harbour. My uncle sent me with the letters and the batteries. He said you would need the batteries more than the letters."

Mara laughed for the first time in eleven days. "Your uncle is right," she said. "But I will read the letters first."

That night the light turned as it always did, sweeping its long white arm across the water, and in the small kitchen at the foot of the tower two people sat at the table, reading letters aloud to each other while the storm went on outside.""",
    ),
    (
        "python-code",
        '''import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Task:
    """A to-do item with a title, a priority and a done flag."""

    title: str
    priority: int = 3
    done: bool = False


def load_tasks(path: Path) -> list[Task]:
    """Read tasks from a JSON file; a missing file means no tasks yet."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as handle:
        return [Task(**item) for item in json.load(handle)]


def save_tasks(path: Path, tasks: list[Task]) -> None:
    data = [task.__dict__ for task in tasks]
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def next_task(tasks: list[Task]) -> Task | None:
    """The most urgent task that is not done yet (1 is the highest priority)."""
    pending = [task for task in tasks if not task.done]
    if not pending:
        return None
    return min(pending, key=lambda task: (task.priority, task.title))


if __name__ == "__main__":
    tasks = load_tasks(Path("tasks.json"))
    tasks.append(Task("Water the plants", priority=2))
    task = next_task(tasks)
    print(f"Next: {task.title}" if task else "Nothing left to do.")
    save_tasks(Path("tasks.json"), tasks)
''',
    ),
    (
        "photosynthesis",
        """Photosynthesis is the process by which plants, algae and some bacteria turn light into chemical energy. It takes place mainly in the leaves, inside small structures called chloroplasts. These contain chlorophyll, the green pigment that absorbs red and blue light and reflects green light, which is why most plants look green to us.

The overall reaction is simple to write down: six molecules of carbon dioxide and six molecules of water, with the energy of light, become one molecule of glucose and six molecules of oxygen. In reality it happens in two stages. In the light-dependent reactions, energy from sunlight splits water molecules, releasing oxygen and storing energy in two carrier molecules, ATP and NADPH. In the second stage, often called the Calvin cycle, the plant uses that stored energy to fix carbon dioxide from the air into sugars.

Almost all life on Earth depends on this process, directly or indirectly. The oxygen we breathe was released by photosynthesis over billions of years, and the food we eat, whether plant or animal, can be traced back to sugars made in a leaf or in a single-celled alga floating near the surface of the ocean.""",
    ),
    (
        "french-german",
        """Chaque matin, le marché de la place centrale s'anime dès six heures. Les maraîchers installent leurs étals de tomates, de courgettes et de pêches, tandis que le fromager découpe de grandes meules de comté. Les habitants viennent tôt pour trouver les meilleurs produits, et les touristes arrivent plus tard, un café à la main, pour prendre des photos des fleurs et des paniers colorés.

Am Wochenende fahren viele Familien aus der Stadt hinaus in die Berge. Im Sommer wandern sie zu den Seen, im Winter fahren sie Ski oder gehen mit Schneeschuhen durch den Wald. Die Hütten am Weg bieten Suppe, Brot und heißen Tee an, und wer früh aufbricht, kann den Sonnenaufgang über den Gipfeln sehen.""",
    ),
    (
        "meeting-notes",
        """Minutes of the community garden committee, 14 March

Present: Ana (chair), Ben, Chloé, David, Emeka. Apologies: Fatima.

1. Budget. The committee has 1,240 euros left for this year. Ben proposed spending 300 euros on a second water tank; approved unanimously. Chloé will ask two suppliers for quotes before the end of the month.
2. Plots. Twelve of the forty plots are still free. Emeka suggested offering three of them to the primary school for a children's vegetable bed. David asked who would water the bed during the summer holidays. Agreed: the school will find volunteer families, and the committee will cover any weeks nobody signs up for.
3. Tools. The shed lock was broken again in February. Ana will replace it with a code lock; the code will be shared by email and changed every six months.
4. Open day. The spring open day will take place on Saturday 27 April from 10:00 to 16:00, with seed swapping, a composting workshop and a cake stall.

The next meeting will be held on 11 April at 19:00 in the library.""",
    ),
)

# A conversation rendered through the model's chat template (when it has one), so that the
# special tokens and the assistant's turn-taking are part of what is measured.
REFERENCE_CONVERSATION: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a helpful assistant who answers briefly and precisely."},
    {"role": "user", "content": "What is the difference between weather and climate?"},
    {
        "role": "assistant",
        "content": "Weather is the state of the atmosphere at a given place and time: today's temperature, rain or wind. "
        "Climate is the average pattern of weather in a region over a long period, usually thirty years or more. "
        "In short, weather is what you get on a particular day, and climate is what you expect over the years.",
    },
    {"role": "user", "content": "Can you give me an example?"},
    {
        "role": "assistant",
        "content": "Sure. A cold, rainy week in Seville in July is weather. The fact that Seville usually has hot, dry summers "
        "and mild winters is its climate. One unusual week does not change the climate, but a steady rise in average "
        "summer temperatures over several decades does.",
    },
    {"role": "user", "content": "How many days are there in a leap year, and why do we need them?"},
    {
        "role": "assistant",
        "content": "A leap year has 366 days instead of 365. The Earth takes about 365.2422 days to go around the Sun, so "
        "adding one day every four years keeps the calendar in step with the seasons. Because that overcorrects slightly, "
        "years divisible by 100 are not leap years unless they are also divisible by 400, which is why 2000 was a leap "
        "year but 1900 was not.",
    },
)
