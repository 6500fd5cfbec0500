"""The embedded fictional world: entities, facts, documents and multi-hop questions.

Nobody here can download R1-Distill or Wikipedia, so every AutoCoA stage runs on a small invented
world instead. Its answers can only be found by searching (the names are invented), and only the
`known` half of it is in the base model's pretraining text, so deciding *when* to search is a real
decision (paper §3.1, "when to act").

The language is deliberately regular so that a model of a few million parameters can learn it:
- names are two invented words built from syllables ("Dorin Kalvet"), unique across the world;
- every fact is one sentence "The <relation> of <subject> is <object>." and a document is the type
  sentence plus the facts of one entity;
- a question is a chain "What is the r3 of the r2 of the r1 of X?" (1-4 hops) or a comparison
  "Who was born earlier, A or B?" (2 lookups).

Distractors are extra entities whose names share one word with a real entity; they are only in the
search corpus, never asked about and never reached by a question's chain.

Everything is a pure function of the seed: one `random.Random(seed)`, no global state, and sets are
never iterated, so the same seed gives the same world in any process.

What we simplified relative to the paper: the paper's questions come from HotpotQA/2Wiki/MuSiQue over
Wikipedia; here a handful of templates over 11 relations stand in for them (see data/convert.py for
the real datasets).

    python -m data.world --seed 0     # print a few documents and questions
"""
import argparse
import random
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------- schema
TYPES = ("person", "org", "city", "country", "book")
TYPE_WORDS = {"person": "a person", "org": "an organisation", "city": "a city",
              "country": "a country", "book": "a book"}

# relation -> (subject type, object type); "year" objects are integers. The relation string is used
# verbatim in documents, questions, reasoning and search queries, so the same words always line up.
RELATIONS = {
    "birthplace": ("person", "city"),
    "employer": ("person", "org"),
    "birth year": ("person", "year"),
    "founder": ("org", "person"),
    "headquarters": ("org", "city"),
    "founding year": ("org", "year"),
    "country": ("city", "country"),
    "mayor": ("city", "person"),
    "capital": ("country", "city"),
    "author": ("book", "person"),
    "publication year": ("book", "year"),
}
RELATIONS_OF = {t: [r for r, (s, _) in RELATIONS.items() if s == t] for t in TYPES}

# comparison questions: subject type -> (year relation, "earlier" wording, "later" wording)
COMPARISONS = {
    "person": ("birth year", "Who was born earlier, {a} or {b}?", "Who was born later, {a} or {b}?"),
    "org": ("founding year", "Which organisation was founded earlier, {a} or {b}?",
            "Which organisation was founded later, {a} or {b}?"),
    "book": ("publication year", "Which book was published earlier, {a} or {b}?",
             "Which book was published later, {a} or {b}?"),
}

DEFAULT_SIZES = {"person": 100, "org": 40, "city": 40, "country": 10, "book": 40}


@dataclass
class Entity:
    id: str
    name: str
    type: str
    known: bool = False        # its document is in the base model's pretraining text
    distractor: bool = False   # only in the search corpus; never asked about
    facts: dict = field(default_factory=dict)  # relation -> entity name (str) or year (int)


@dataclass
class Question:
    question: str
    answer: str
    hops: int
    type: str                  # "composition" or "comparison"
    lookups: list              # [(entity name, relation), ...] in the order they must be resolved
    compare: str = ""          # comparison only: "earlier" or "later"


@dataclass
class World:
    seed: int
    entities: list

    def __post_init__(self):
        self.by_name = {e.name: e for e in self.entities}

    def fact(self, name, relation):
        return self.by_name[name].facts[relation]

    def real(self, type_=None):
        return [e for e in self.entities if not e.distractor and (type_ is None or e.type == type_)]

    def to_json(self):
        return {"seed": self.seed, "relations": {r: list(st) for r, st in RELATIONS.items()},
                "entities": [{"id": e.id, "name": e.name, "type": e.type, "known": e.known,
                              "distractor": e.distractor, "facts": e.facts} for e in self.entities]}


# ----------------------------------------------------------------------------- text
def fact_sentence(subject, relation, value):
    """The one sentence form of a fact, shared by documents and reasoning traces."""
    return f"The {relation} of {subject} is {value}."


def document(e):
    """Corpus contents in the wiki-18 layout: '"Title"\\ntext'."""
    sentences = [f"{e.name} is {TYPE_WORDS[e.type]}."]
    sentences += [fact_sentence(e.name, r, e.facts[r]) for r in RELATIONS_OF[e.type]]
    return f'"{e.name}"\n' + " ".join(sentences)


def composition_text(start, relations):
    """relations in lookup order: ["employer", "founder"] -> 'the founder of the employer of X'."""
    phrase = start
    for r in relations:
        phrase = f"the {r} of {phrase}"
    return f"What is {phrase}?"


# ----------------------------------------------------------------------------- names
ONSETS = "b d f g k l m n p r s t v z".split()
VOWELS = "a e i o u".split()
CODAS = ["", "", "n", "r", "s", "l", "m", "k", "t"]


def invent_word(rng):
    """Two consonant-vowel syllables and an optional coda: "Doran", "Kelvo", "Tisak"."""
    syllables = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(2)]
    return ("".join(syllables) + rng.choice(CODAS)).capitalize()


def fresh_word(rng, used):
    while True:
        w = invent_word(rng)
        if w not in used:
            used.add(w)
            return w


# ----------------------------------------------------------------------------- world
def distinct_years(rng, n, lo, span, used):
    """n years from [lo, lo + span), moved up past any year already in `used`: no two facts share a
    year, so every comparison has a strict answer."""
    out = []
    for _ in range(n):
        y = lo + rng.randrange(span)
        while y in used:
            y += 1
        used.add(y)
        out.append(y)
    return out


def make_world(seed=0, sizes=None, known_fraction=0.5, n_distractors=40):
    """Build the world. Real entities' facts only point at real entities, so a question's chain
    never passes through a distractor."""
    rng = random.Random(seed)
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    assert sizes["person"] >= 1 and sizes["city"] >= sizes["country"] >= 1 and sizes["org"] >= 1
    used_words, by_type, entities = set(), {}, []
    for t in TYPES:
        by_type[t] = []
        for _ in range(sizes[t]):
            name = f"{fresh_word(rng, used_words)} {fresh_word(rng, used_words)}"
            e = Entity(id=f"e{len(entities):04d}", name=name, type=t)
            by_type[t].append(e)
            entities.append(e)
    person, org, city, country, book = (by_type[t] for t in TYPES)

    # cities: every country gets at least one city, its capital is one of them
    for i, c in enumerate(city):
        c.facts["country"] = country[i].name if i < len(country) else rng.choice(country).name
        c.facts["mayor"] = rng.choice(person).name
    for k in country:
        k.facts["capital"] = rng.choice([c for c in city if c.facts["country"] == k.name]).name
    # people, then organisations founded 25-60 years after their founder's birth, books likewise
    years = set()
    for p, y in zip(person, distinct_years(rng, len(person), 1700, 250, years)):
        p.facts["birthplace"] = rng.choice(city).name
        p.facts["employer"] = rng.choice(org).name
        p.facts["birth year"] = y
    for o in org:
        founder = rng.choice(person)
        o.facts["founder"] = founder.name
        o.facts["headquarters"] = rng.choice(city).name
        o.facts["founding year"] = distinct_years(rng, 1, founder.facts["birth year"] + 25, 35, years)[0]
    for b in book:
        author = rng.choice(person)
        b.facts["author"] = author.name
        b.facts["publication year"] = distinct_years(rng, 1, author.facts["birth year"] + 20, 50, years)[0]
    for t in TYPES:  # exactly round(fraction * n) known entities per type
        for e in rng.sample(by_type[t], round(known_fraction * len(by_type[t]))):
            e.known = True

    # distractors: one word shared with a real entity ("Dorin Kalvet" -> "Dorin Masek"), facts
    # pointing at real entities, so BM25 must use both words of a name to find the right page
    for _ in range(n_distractors):
        t = rng.choice(("person", "org", "city", "book"))
        words = rng.choice(by_type[t]).name.split()
        keep = rng.randrange(2)
        words[1 - keep] = fresh_word(rng, used_words)
        e = Entity(id=f"e{len(entities):04d}", name=" ".join(words), type=t, distractor=True)
        for r in RELATIONS_OF[t]:
            obj = RELATIONS[r][1]
            e.facts[r] = 1700 + rng.randrange(300) if obj == "year" else rng.choice(by_type[obj]).name
        entities.append(e)
    return World(seed=seed, entities=entities)


# ----------------------------------------------------------------------------- questions
def composition_questions(world, max_hops=4):
    """Every chain of 1..max_hops lookups from every real entity, without revisiting an entity
    (so no "the founder of the employer of X" that is X again). Years end a chain."""
    out = []

    def walk(start, name, relations, seen):
        for r in RELATIONS_OF[world.by_name[name].type]:
            value = world.fact(name, r)
            if isinstance(value, str) and value in seen:
                continue
            chain = relations + [r]
            lookups, cur = [], start
            for rr in chain:
                lookups.append((cur, rr))
                cur = world.fact(cur, rr)
            out.append(Question(composition_text(start, chain), str(value), len(chain),
                                "composition", lookups))
            if isinstance(value, str) and len(chain) < max_hops:
                walk(start, value, chain, seen + [value])

    for e in world.real():
        walk(e.name, e.name, [], [e.name])
    return out


def comparison_questions(world, rng):
    """One question per unordered pair of same-type entities; earlier/later and order drawn at random
    (only one variant per pair, so a held-out pair is not answered in training in another order)."""
    out = []
    for t, (rel, earlier, later) in COMPARISONS.items():
        ents = world.real(t)
        for i in range(len(ents)):
            for j in range(i + 1, len(ents)):
                a, b = (ents[i], ents[j]) if rng.random() < 0.5 else (ents[j], ents[i])
                compare = rng.choice(("earlier", "later"))
                ya, yb = a.facts[rel], b.facts[rel]
                win = a if (ya < yb) == (compare == "earlier") else b
                text = (earlier if compare == "earlier" else later).format(a=a.name, b=b.name)
                out.append(Question(text, win.name, 2, "comparison", [(a.name, rel), (b.name, rel)],
                                    compare))
    return out


def make_questions(world, rng, max_hops=4):
    """All candidate questions, grouped by stratum ("composition", hops) / ("comparison", 2)."""
    strata = {}
    for q in composition_questions(world, max_hops) + comparison_questions(world, rng):
        strata.setdefault((q.type, q.hops), []).append(q)
    return strata


def unknown_lookups(world, q):
    return sum(not world.by_name[name].known for name, _ in q.lookups)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    args = ap.parse_args()
    w = make_world(args.seed)
    for e in w.real()[:3] + [e for e in w.entities if e.distractor][:2]:
        print(document(e), "| known" if e.known else "| unknown", "\n")
    strata = make_questions(w, random.Random(args.seed))
    for key, qs in sorted(strata.items()):
        print(key, len(qs), "e.g.", qs[0].question, "->", qs[0].answer)
