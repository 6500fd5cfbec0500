"""The embedded fictional world: entities, facts, documents and multi-hop questions.

Nobody here can download R1-Distill or Wikipedia, so every AutoCoA stage runs on a small invented
world instead. Every entity belongs to one split, and the split says who may ever see its facts:

    known   its page is in the base model's pretraining text: recalling it is right (paper §3.1)
    train   unknown to the base; its facts reach the model only through tool results in SFT and RL
    dev     held out: its name and facts appear in no training file; dev questions start from it
    test    held out likewise; test questions start from it, so only reading the tool can answer them

Facts of known and train entities point only at known and train entities, so no training text can
mention a held-out name; a held-out entity's facts may point at anything of its own split or the
training side. Names are two words drawn from one shared pool, and the known names use every word of
it, so a held-out name is a new combination of tokens the base model has seen: copying it out of a
question or a search result is possible, remembering its facts is not.

The language is deliberately regular so that a model of a few million parameters can learn it:
- every fact is one sentence "The <relation> of <subject> is <object>." and a document is the type
  sentence plus the facts of one entity;
- a question is a chain "What is the r3 of the r2 of the r1 of X?" (1-4 hops) or a comparison
  "Who was born earlier, A or B?" (2 lookups).

Because names share words, a query with only one word of a name ("Kalvet birthplace") can rank another
entity's page first; the simulated teacher of data/trajectories.py sometimes makes that mistake.
Distractors are extra corpus pages with names from the same pool; they are never asked about.

Everything is a pure function of the seed: one `random.Random(seed)`, no global state, and sets are
never iterated, so the same seed gives the same world in any process.

What we simplified relative to the paper: the paper's questions come from HotpotQA/2Wiki/MuSiQue over
Wikipedia; here a handful of templates over the relations of RELATIONS stand in for them (see data/convert.py for
the real datasets).

    python -m data.world --seed 0     # print a few documents and questions
"""
import argparse
import math
import random
import re
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

# The words comparison questions ask with. The embedded world asks "earlier" only: its 1M-parameter base
# model never learned to carry the question's word into the decision line (it wrote "earlier" or "later"
# whatever the question said, so comparisons stayed at chance; RESULTS.md, "What changed").
# `python -m data.build --compare-words earlier later` builds the world with both.
COMPARE_WORDS = ("earlier",)

DEFAULT_SIZES = {"person": 800, "org": 300, "city": 240, "country": 12, "book": 300}
SPLITS = ("known", "train", "dev", "test")
HELD_OUT = ("dev", "test")
# share of each type's entities per split; countries are few and only known or train (see make_world)
# Most entities are `train`: each appears in only a few SFT trajectories, so that copying its facts out of
# the observation, not remembering them, is what lowers the training loss.
DEFAULT_SPLIT_FRACTIONS = {"known": 0.1, "train": 0.81, "dev": 0.03, "test": 0.06}
MAX_COMPARISONS = 20_000  # candidate comparison questions per type (all pairs would be ~n^2 / 2)


@dataclass
class Entity:
    id: str
    name: str
    type: str
    split: str = "train"       # known | train | dev | test (module docstring); distractors: "train"
    distractor: bool = False   # only in the search corpus; never asked about
    facts: dict = field(default_factory=dict)  # relation -> entity name (str) or year (int)

    @property
    def known(self):
        """Its page is in the base model's pretraining text."""
        return self.split == "known"

    @property
    def held_out(self):
        return self.split in HELD_OUT


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
    words: list = field(default_factory=list)  # the name-word pool

    def __post_init__(self):
        self.by_name = {e.name: e for e in self.entities}

    def fact(self, name, relation):
        return self.by_name[name].facts[relation]

    def real(self, type_=None):
        return [e for e in self.entities if not e.distractor and (type_ is None or e.type == type_)]

    def split_of(self, q):
        """The held-out split a question touches ("dev" or "test"), else "train" (known and train only)."""
        splits = {self.by_name[n].split for n, _ in q.lookups}
        held = [s for s in HELD_OUT if s in splits]
        return held[0] if held else "train"

    def to_json(self):
        return {"seed": self.seed, "relations": {r: list(st) for r, st in RELATIONS.items()}, "words": self.words,
                "entities": [{"id": e.id, "name": e.name, "type": e.type, "split": e.split, "known": e.known,
                              "distractor": e.distractor, "facts": e.facts} for e in self.entities]}


# ----------------------------------------------------------------------------- text
# A name-valued fact is a verb phrase ("X was born in Y."): the words just before its value differ from one
# fact of a page to the next and occur nowhere else in a trajectory (the question, the decision line and the
# query name the relation), so a reading line that ends in them matches one place on the page. With "The
# birthplace of X is Y." every value follows "is"; with "X has the birthplace Y." it follows the relation's
# name, which the query holds too; with either, some pretraining seeds copied whichever name the page
# states last (RESULTS.md, "The base model's seed"). Years (digits, always copied) and the capital (one
# fact per page) keep the plain form.
PHRASES = {"birthplace": "was born in", "employer": "works for", "founder": "was founded by",
           "headquarters": "is based in", "country": "lies in", "mayor": "is governed by", "author": "was written by"}


def fact_prefix(subject, relation):
    """A fact's sentence up to its value: "X was born in", "The birth year of X is"."""
    return f"{subject} {PHRASES[relation]}" if relation in PHRASES else f"The {relation} of {subject} is"


def fact_sentence(subject, relation, value):
    """The one sentence form of a fact, shared by documents and reasoning traces."""
    return f"{fact_prefix(subject, relation)} {value}."


_NAME = r"[A-Z][a-z]+ [A-Z][a-z]+"  # make_names: two capitalised words
FACT_RE = re.compile(rf"(?:({_NAME}) ({'|'.join(PHRASES.values())})|\b[Tt]he ([a-z]+(?: [a-z]+)?) of ({_NAME}) is) "
                     rf"({_NAME}|\d+)\.")
_RELATION_OF = {phrase: relation for relation, phrase in PHRASES.items()}


def parse_facts(text):
    """Every fact sentence in text (fact_sentence, or a reasoning line's lower-case "the ... of ... is"),
    as (relation, subject, value) strings, in order."""
    return [(_RELATION_OF[phrase], s1, value) if s1 else (relation, s2, value)
            for s1, phrase, relation, s2, value in FACT_RE.findall(text)]


def document(e, rng=None):
    """Corpus contents in the wiki-18 layout: '"Title"\\ntext'. rng: the facts in an order drawn from it
    (default: one fixed order per type)."""
    relations = list(RELATIONS_OF[e.type])
    if rng is not None:
        rng.shuffle(relations)
    sentences = [f"{e.name} is {TYPE_WORDS[e.type]}."]
    sentences += [fact_sentence(e.name, r, e.facts[r]) for r in relations]
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


def word_pool(rng, n):
    """n distinct invented words, in the order drawn."""
    words, seen = [], set()
    while len(words) < n:
        w = invent_word(rng)
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


class NameMaker:
    """Two-word names from the pool, never repeated. `cover()` names walk the pool in a shuffled cycle, so
    the first len(pool) / 2 of them use every word at least once (the known entities' names: then every
    word of any later name is a token the base model saw)."""

    def __init__(self, rng, words, taken=()):
        self.rng, self.words, self.used = rng, words, set(taken)
        self.cycle = []

    def _next_word(self):
        if not self.cycle:
            self.cycle = self.rng.sample(self.words, len(self.words))
        return self.cycle.pop()

    def cover(self):
        while True:
            name = f"{self._next_word()} {self._next_word()}"
            if name not in self.used and name.split()[0] != name.split()[1]:
                self.used.add(name)
                return name

    def random(self):
        while True:
            a, b = self.rng.sample(self.words, 2)
            name = f"{a} {b}"
            if name not in self.used:
                self.used.add(name)
                return name


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


def split_counts(t, n, fractions):
    """How many entities of type t go to each split. Countries (few, and every city points at one) are only
    known or train, half each."""
    if t == "country":
        k = round(n / 2)
        return {"known": k, "train": n - k, "dev": 0, "test": 0}
    # at least one of each where the type has a few entities (a tiny world for tests still has every split)
    counts = {s: max(round(fractions[s] * n), int(n >= 4 and fractions[s] > 0)) for s in ("known", "dev", "test")}
    counts["train"] = n - sum(counts.values())
    if min(counts.values()) < 0:
        raise ValueError(f"split fractions {fractions} do not fit {n} entities of type {t}")
    return counts


def make_world(seed=0, sizes=None, fractions=None, n_words=None, n_distractors=40, words=None, avoid=(),
               first_year=1700):
    """Build the world. words: the name-word pool (default: n_words fresh words, as many as there are known
    entities unless given); avoid: names that must not be used (another world's). Facts of known and train
    entities only point at known and train entities; a dev or test entity's facts may also point at its own
    split (module docstring). first_year: where the birth years start; the other years follow them."""
    rng = random.Random(seed)
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    fractions = {**DEFAULT_SPLIT_FRACTIONS, **(fractions or {})}
    if not (sizes["person"] >= 1 and sizes["org"] >= 1 and sizes["book"] >= 0 and sizes["country"] >= 1):
        raise ValueError(f"sizes {sizes}: need at least one person, org and country")
    plan = [(t, split) for t in TYPES for split, n in split_counts(t, sizes[t], fractions).items() for _ in range(n)]
    n_known = sum(s == "known" for _, s in plan)
    if not words:  # as many words as known entities, or enough for three worlds' names if that is more
        n_words = n_words or min(2 * n_known, max(n_known, math.ceil(math.sqrt(3 * (len(plan) + n_distractors))) + 1))
        words = word_pool(rng, n_words)
    words = list(words)
    if len(words) * (len(words) - 1) < len(plan) + n_distractors + len(avoid):
        raise ValueError(f"{len(words)} name words cannot name {len(plan) + n_distractors} entities "
                         f"(+{len(avoid)} taken): more known entities, or fewer entities")
    names = NameMaker(rng, words, avoid)
    # known names first: they walk the pool, so every word of every name is in the pretraining text
    named = {i: names.cover() for i, (t, split) in enumerate(plan) if split == "known"}
    named.update({i: names.random() for i, (t, split) in enumerate(plan) if split != "known"})
    entities = [Entity(id=f"e{i:04d}", name=named[i], type=t, split=split) for i, (t, split) in enumerate(plan)]
    missing = sorted(set(words) - {w for e in entities if e.known for w in e.name.split()})
    if missing:
        raise ValueError(f"{len(missing)} name words appear in no known name (e.g. {missing[:3]}): "
                         f"raise the known fraction or lower the number of words")
    by_type = {t: [e for e in entities if e.type == t] for t in TYPES}
    person, org, city, country, book = (by_type[t] for t in TYPES)

    def objects(t, subject):  # what a subject's fact may point at: never another split's held-out entity;
        # a known entity's facts point at known ones half the time, so that chains of known facts exist
        pool = [e for e in by_type[t] if not e.held_out or e.split == subject.split]
        known = [e for e in pool if e.known]
        return known if subject.known and known and rng.random() < 0.5 else pool

    # cities: every country gets a known or train city first, and its capital is one of those
    training_side = [c for c in city if not c.held_out]
    if len(training_side) < len(country):
        raise ValueError("fewer known/train cities than countries")
    for i, c in enumerate(training_side):
        c.facts["country"] = country[i].name if i < len(country) else rng.choice(country).name
    for c in city:
        if c.held_out:
            c.facts["country"] = rng.choice(country).name
        c.facts["mayor"] = rng.choice(objects("person", c)).name
    for k in country:
        k.facts["capital"] = rng.choice([c for c in training_side if c.facts["country"] == k.name]).name
    # people, then organisations founded 25-60 years after their founder's birth, books likewise
    years = set()
    for p, y in zip(person, distinct_years(rng, len(person), first_year, 250, years)):
        p.facts["birthplace"] = rng.choice(objects("city", p)).name
        p.facts["employer"] = rng.choice(objects("org", p)).name
        p.facts["birth year"] = y
    for o in org:
        founder = rng.choice(objects("person", o))
        o.facts["founder"] = founder.name
        o.facts["headquarters"] = rng.choice(objects("city", o)).name
        o.facts["founding year"] = distinct_years(rng, 1, founder.facts["birth year"] + 25, 35, years)[0]
    for b in book:
        author = rng.choice(objects("person", b))
        b.facts["author"] = author.name
        b.facts["publication year"] = distinct_years(rng, 1, author.facts["birth year"] + 20, 50, years)[0]

    # distractors: more pages with names from the same pool, facts pointing at known/train entities
    for _ in range(n_distractors):
        t = rng.choice(("person", "org", "city", "book"))
        e = Entity(id=f"e{len(entities):04d}", name=names.random(), type=t, distractor=True)
        for r in RELATIONS_OF[t]:
            obj = RELATIONS[r][1]
            e.facts[r] = 1700 + rng.randrange(300) if obj == "year" else rng.choice(objects(obj, e)).name
        entities.append(e)
    return World(seed=seed, entities=entities, words=words)


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


def comparison_questions(world, rng, max_per_type=MAX_COMPARISONS, words=COMPARE_WORDS):
    """One question per unordered pair of same-type entities (at most max_per_type pairs drawn at random per
    type, pairs with a held-out entity first so that dev and test have enough); the word (of `words`:
    "earlier", "later") and the order drawn at random (only one variant per pair, so a held-out pair is not
    answered in training in another order)."""
    out = []
    for t, (rel, earlier, later) in COMPARISONS.items():
        ents = world.real(t)
        pairs = [(i, j) for i in range(len(ents)) for j in range(i + 1, len(ents))
                 if {ents[i].split, ents[j].split} != set(HELD_OUT)]  # one held-out split per question at most
        held = [p for p in pairs if ents[p[0]].held_out or ents[p[1]].held_out]
        rest = [p for p in pairs if not (ents[p[0]].held_out or ents[p[1]].held_out)]
        k = min(len(held), max_per_type // 2)
        pairs = sorted(rng.sample(held, k) + rng.sample(rest, min(len(rest), max_per_type - k)))
        for i, j in pairs:
            a, b = (ents[i], ents[j]) if rng.random() < 0.5 else (ents[j], ents[i])
            compare = rng.choice(words)
            ya, yb = a.facts[rel], b.facts[rel]
            win = a if (ya < yb) == (compare == "earlier") else b
            text = (earlier if compare == "earlier" else later).format(a=a.name, b=b.name)
            out.append(Question(text, win.name, 2, "comparison", [(a.name, rel), (b.name, rel)], compare))
    return out


def make_questions(world, rng, max_hops=4, words=COMPARE_WORDS):
    """All candidate questions, grouped by stratum ("composition", hops) / ("comparison", 2)."""
    strata = {}
    for q in composition_questions(world, max_hops) + comparison_questions(world, rng, words=words):
        strata.setdefault((q.type, q.hops), []).append(q)
    return strata


def unknown_lookups(world, q):
    return sum(not world.by_name[name].known for name, _ in q.lookups)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    args = ap.parse_args()
    w = make_world(args.seed)
    for split in SPLITS:
        e = next(e for e in w.real() if e.split == split)
        print(document(e), f"| {split}\n")
    strata = make_questions(w, random.Random(args.seed))
    for key, qs in sorted(strata.items()):
        print(key, len(qs), "e.g.", qs[0].question, "->", qs[0].answer)
