"""Realistic, varied synthetic memories and queries for the scale benchmark (seeded)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

FIRST = ("Ada Bruno Chen Dana Elif Farah Gus Hana Ivan Jo Kofi Lena Mateo Nia Omar Priya Quinn Rosa "
         "Sami Tara Uma Viktor Wen Xavi Yara Zoe Aiko Bilal Carmen Dmitri Esme Femi Greta Hugo Ines "
         "Jonas Kira Luca Maya Noor Otto Pia Rami Sofia Theo Ula Vera Wade Yusuf Zara").split()
LAST = "Adams Berg Costa Diaz Eriksen Fischer Garcia Hall Ito Jensen Khan Lopez Moreau Novak Okafor".split()
ACTIVITIES = [
    ("went hiking", "hike"), ("started a pottery class", "pottery"), ("adopted a rescue dog", "dog"),
    ("ran a half marathon", "marathon"), ("painted a sunset landscape", "painting"),
    ("baked sourdough bread", "baking"), ("visited the science museum", "museum"),
    ("joined a book club", "book club"), ("fixed the leaking kitchen sink", "plumbing"),
    ("planted tomatoes and basil", "garden"), ("learned to play the cello", "cello"),
    ("booked a flight to Lisbon", "travel"), ("presented the quarterly budget", "budget"),
    ("switched to a vegetarian diet", "diet"), ("moved into a new apartment", "moving"),
    ("volunteered at the food bank", "volunteering"), ("bought an electric bike", "bike"),
    ("finished reading a mystery novel", "reading"), ("repaired an old film camera", "camera"),
    ("organised a surprise birthday party", "party"), ("started learning Japanese", "japanese"),
    ("got promoted to team lead", "promotion"), ("went to a jazz concert", "concert"),
    ("tried rock climbing for the first time", "climbing"), ("wrote a short story", "writing"),
    ("took the kids to the aquarium", "aquarium"), ("cooked a Thai green curry", "cooking"),
    ("renewed a passport", "passport"), ("signed up for a chess tournament", "chess"),
    ("built a wooden bookshelf", "woodwork"), ("caught a cold after the rain", "health"),
]
PLACES = ("in the mountains|near the lake|downtown|at the community centre|in Berlin|at home|"
          "by the beach|at the office|in the old town|at the park|in Kyoto|at a friend's house|"
          "in the countryside|at the university|on the island").split("|")
TIMES = ("last weekend|yesterday|this morning|two weeks ago|in May|last summer|on Friday evening|"
         "over the holidays|early in January|after work|last autumn|on her birthday|on his day off|"
         "during the spring break|a month ago").split("|")
FEELINGS = ("and loved it|and found it harder than expected|and wants to do it again|"
            "with a few friends|to relax after a stressful week|and shared photos with the family|"
            "as part of a new year's resolution|and met someone interesting there|"
            "but it rained the whole time|and said it was the highlight of the month").split("|")
FACTS = [
    "{n} prefers {x} over coffee in the morning.", "{n}'s favourite colour is {c}.",
    "{n} is allergic to {a}.", "{n} works as a {j} in {p}.", "{n} has a sister who lives {p}.",
    "{n} always forgets where the {k} are kept.", "The password hint {n} chose mentions {c} {a}.",
]
DRINKS = "green tea|hot chocolate|orange juice|chai|mint tea".split("|")
COLOURS = "teal|amber|crimson|navy".split("|")
ALLERGENS = "peanuts|pollen|shellfish|cats|penicillin".split("|")
JOBS = "nurse|data engineer|teacher|architect|chef|pilot|accountant|journalist".split("|")
KEEPS = "car keys|spare batteries|tax receipts|winter gloves".split("|")


def _name(r: random.Random) -> str:
    return f"{r.choice(FIRST)} {r.choice(LAST)}"


def sentence(r: random.Random) -> str:
    """One memory: mostly an episode, sometimes a fact about a person."""
    if r.random() < 0.2:
        return r.choice(FACTS).format(n=_name(r), x=r.choice(DRINKS), c=r.choice(COLOURS),
                                      a=r.choice(ALLERGENS), j=r.choice(JOBS), p=r.choice(PLACES),
                                      k=r.choice(KEEPS))
    act, _ = r.choice(ACTIVITIES)
    return f"{_name(r)} {act} {r.choice(PLACES)} {r.choice(TIMES)} {r.choice(FEELINGS)}."


def sentences(n: int, seed: int = 7) -> list[str]:
    """n distinct sentences."""
    r = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen[sentence(r)] = None
    return list(seen)


def queries(n: int, seed: int = 11) -> list[str]:
    """n natural questions over the same world."""
    r = random.Random(seed)
    shapes = ["What did {n} do {t}?", "Who {a} {p}?", "When did {n} go {p}?",
              "What does {n} drink in the morning?", "Where does {n} work?",
              "Which of my friends is into {h}?", "What happened {p} {t}?"]
    out = []
    for _ in range(n):
        act, hobby = r.choice(ACTIVITIES)
        out.append(r.choice(shapes).format(n=_name(r), t=r.choice(TIMES), a=act,
                                           p=r.choice(PLACES), h=hobby))
    return out


_HOBBY = {hobby: act for act, hobby in ACTIVITIES}
_WHEN = "|".join(re.escape(t) for t in TIMES)
_WHERE = "|".join(re.escape(p) for p in PLACES)
# each query shape, and what a memory must say to answer it (the needles, from the match)
_ANSWERS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], list[str]]]] = [
    (re.compile(rf"What did (.+) do ({_WHEN})\?"), lambda m: [m[1], m[2]]),
    (re.compile(rf"Who (.+) ({_WHERE})\?"), lambda m: [m[1], m[2]]),
    (re.compile(rf"When did (.+) go ({_WHERE})\?"), lambda m: [m[1], m[2]]),
    (re.compile(r"What does (.+) drink in the morning\?"),
     lambda m: [m[1], "over coffee in the morning"]),
    (re.compile(r"Where does (.+) work\?"), lambda m: [m[1], "works as"]),
    (re.compile(r"Which of my friends is into (.+)\?"), lambda m: [_HOBBY[m[1]]]),
    (re.compile(rf"What happened ({_WHERE}) ({_WHEN})\?"), lambda m: [m[1], m[2]]),
]


def needles(query: str) -> list[str]:
    """What a memory must contain to answer one of `queries`' questions: e.g. the person and
    the time for "What did Ada Berg do last weekend?" (a memory saying both is relevant)."""
    for pattern, answer in _ANSWERS:
        m = pattern.fullmatch(query)
        if m:
            return answer(m)
    raise ValueError(f"not a question of this corpus: {query!r}")


def relevant(query: str, content: str) -> bool:
    return all(n in content for n in needles(query))
