"""The embedded fictional world: entities, facts, pages and multi-hop questions.

Nobody here can download R1-Distill or Wikipedia, so every AutoCoA stage runs on a small invented world
instead. Every entity belongs to one split, and the split says who may ever see its facts:

    known   its page is in the base model's pretraining text: recalling its facts is right (paper §3.1)
    train   unknown to the base model; its facts reach a model only through search results in SFT and RL
    dev     held out: its name and facts are in no training file; dev questions need its facts
    test    held out likewise; test questions need its facts, so only reading the tool answers them

Facts of known and train entities point only at known and train entities, so no training text can name a
held-out entity. Names are two words from one pool, and the known names use every word of it: a held-out
name is a new pair of words the base model has seen, so it can be copied but not remembered.

One phrase form, everywhere: "<subject>'s <relation>". A fact is "X's birthplace is Y." on a page and in the
reasoning ("I need X's employer.", "The search result says that X's employer is Z."), a search query is the
phrase itself ("X's employer"), and a question chains it in the order it is resolved ("What is X's
employer's founder?"). So the words just before a value name its relation and, one word earlier, its
subject, and the relation a chain needs next is the one after the last one resolved. A page is its title and
its entity's facts in an order drawn for that page: where a fact stands on a page says nothing about which
relation it is, only the words before its value do.

Everything is a pure function of the seed: one `random.Random`, no global state, sets never iterated.

Simplified relative to the paper: HotpotQA/2Wiki/MuSiQue over Wikipedia become a few question templates over
the relations below (data/convert.py reads the real datasets).

    python -m data.world --seed 0     # print a few pages and questions
"""
import argparse
import math
import random
import re
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------- schema
TYPES = ("person", "org", "city", "country", "book")

# relation -> (subject type, object type); "year" objects are integers
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

# comparison questions: subject type -> (year relation, question)
COMPARISONS = {
    "person": ("birth year", "Who was born earlier, {a} or {b}?"),
    "org": ("founding year", "Which organisation was founded earlier, {a} or {b}?"),
    "book": ("publication year", "Which book was published earlier, {a} or {b}?"),
}

DEFAULT_SIZES = {"person": 800, "org": 300, "city": 240, "country": 12, "book": 300}
SPLITS = ("known", "train", "dev", "test")
HELD_OUT = ("dev", "test")
# Most entities are `train`: each appears in only a few SFT trajectories, so that copying its facts out of
# the search result, not remembering them, is what lowers the training loss.
DEFAULT_SPLIT_FRACTIONS = {"known": 0.1, "train": 0.81, "dev": 0.03, "test": 0.06}
FIRST_YEAR, YEAR_SPAN = 1000, 1900  # birth years; organisations and books follow their people
MAX_COMPARISONS = 20_000  # candidate comparison questions per type (all pairs would be ~n^2 / 2)


@dataclass
class Entity:
    id: str
    name: str
    type: str
    split: str = "train"       # known | train | dev | test (module docstring)
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


@dataclass
class World:
    seed: int
    entities: list
    words: list = field(default_factory=list)  # the name-word pool

    def __post_init__(self):
        self.by_name = {e.name: e for e in self.entities}

    def fact(self, name, relation):
        return self.by_name[name].facts[relation]

    def of_type(self, type_=None):
        return [e for e in self.entities if type_ is None or e.type == type_]

    def split_of(self, q):
        """The held-out split a question touches ("dev" or "test"), else "train" (known and train only)."""
        splits = {self.by_name[n].split for n, _ in q.lookups}
        held = [s for s in HELD_OUT if s in splits]
        return held[0] if held else "train"

    def to_json(self):
        return {"seed": self.seed, "relations": {r: list(st) for r, st in RELATIONS.items()}, "words": self.words,
                "entities": [{"id": e.id, "name": e.name, "type": e.type, "split": e.split, "known": e.known,
                              "facts": e.facts} for e in self.entities]}


# ----------------------------------------------------------------------------- text
def phrase(subject, relation):
    """"X's birthplace": how a fact is named everywhere (module docstring)."""
    return f"{subject}'s {relation}"


def fact_sentence(subject, relation, value):
    """The one sentence form of a fact, shared by pages and reasoning."""
    return f"{phrase(subject, relation)} is {value}."


_NAME = r"[A-Z][a-z]+ [A-Z][a-z]+"  # make_names: two capitalised words
FACT_RE = re.compile(rf"({_NAME})'s ([a-z]+(?: [a-z]+)?) is ({_NAME}|\d+)[.,;]")


def parse_facts(text):
    """Every fact in text ("X's R is V." or, in a longer sentence, "X's R is V," / "V;"), as (relation,
    subject, value) strings, in order."""
    return [(relation, subject, value) for subject, relation, value in FACT_RE.findall(text)]


def page(name, facts, rng):
    """Corpus contents in the wiki-18 layout, '"Title"\\ntext': the facts in an order drawn from rng."""
    sentences = [fact_sentence(name, r, v) for r, v in facts.items()]
    rng.shuffle(sentences)
    return f'"{name}"\n' + " ".join(sentences)


def composition_text(start, relations):
    """relations in lookup order: ["employer", "founder"] -> "What is X's employer's founder?"."""
    return "What is " + start + "".join(f"'s {r}" for r in relations) + "?"


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
    """Two-word names from the pool, never repeated, nor the same two words in the other order (the search
    tool, BM25, weighs words and not their order, so it could not tell "A B" from "B A": a search for one would
    return the other's page). `pairs()` names walk the pool in a shuffled cycle, so the known entities' names
    use every word at least once (then every word of any later name is a token the base model saw)."""

    def __init__(self, rng, words, taken=()):
        self.rng, self.words, self.taken, self.used = rng, words, set(taken), set()  # taken: another world's
        self.cycle = []

    def free(self, a, b):
        return a != b and frozenset((a, b)) not in self.used and f"{a} {b}" not in self.taken

    def _next_word(self):
        if not self.cycle:
            self.cycle = self.rng.sample(self.words, len(self.words))
        return self.cycle.pop()

    def pairs(self, k):
        """k names in which each word stands in the same place in two names: first words F[i], each with the
        last words L[i] and L[i + 1] around a cycle. One word alone then never tells which entity is meant,
        only the two together do: a model that keys a fact by one word of the name (cheaper than the pair)
        recalls the wrong fact for half the names, and recalls confidently for a stranger who shares a word."""
        m = (k + 1) // 2
        first, last = [self._next_word() for _ in range(m)], [self._next_word() for _ in range(m)]
        names = []
        for i in range(k):
            a, b = first[i // 2], last[(i // 2 + i % 2) % m]
            for _ in range(len(self.words)):  # rare: the cycle came round to a word again
                if self.free(a, b):
                    break
                b = self._next_word()
            else:  # every partner of `a` is taken (a small pool): any free name
                names.append(self.random())
                continue
            self.used.add(frozenset((a, b)))
            names.append(f"{a} {b}")
        return names

    def random(self):
        while True:
            a, b = self.rng.sample(self.words, 2)
            if self.free(a, b):
                self.used.add(frozenset((a, b)))
                return f"{a} {b}"


# ----------------------------------------------------------------------------- world
def distinct_years(rng, n, lo, span, used):
    """n years from [lo, lo + span), moved up past any year already in `used`: no two facts share a year, so
    every comparison has a strict answer."""
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


def make_world(seed=0, sizes=None, fractions=None, words=None, avoid=()):
    """Build the world. words: the name-word pool (default: fresh words, see below); avoid: names that must not be used (another world's). Facts of known and train entities only
    point at known and train entities; a dev or test entity's facts may also point at its own split."""
    rng = random.Random(seed)
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    fractions = {**DEFAULT_SPLIT_FRACTIONS, **(fractions or {})}
    if not (sizes["person"] >= 1 and sizes["org"] >= 1 and sizes["book"] >= 0 and sizes["country"] >= 1):
        raise ValueError(f"sizes {sizes}: need at least one person, org and country")
    plan = [(t, split) for t in TYPES for split, n in split_counts(t, sizes[t], fractions).items() for _ in range(n)]
    n_known = sum(s == "known" for _, s in plan)
    # as many words as known entities, or enough for three worlds' names if that is more (never more than the
    # known names can cover)
    words = list(words or word_pool(rng, min(2 * n_known, max(n_known, math.isqrt(3 * len(plan)) + 2))))
    if len(words) * (len(words) - 1) // 2 < len(plan) or len(words) * (len(words) - 1) < len(plan) + len(avoid):
        raise ValueError(f"{len(words)} name words cannot name {len(plan)} entities (+{len(avoid)} taken): "
                         "more known entities, or fewer entities")
    names = NameMaker(rng, words, avoid)
    # known names first, type by type: they walk the pool, so every word of every name is in the pretraining text
    named = {}
    for t in TYPES:
        known_of_t = [i for i, (tt, split) in enumerate(plan) if tt == t and split == "known"]
        named.update(zip(known_of_t, names.pairs(len(known_of_t))))
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
    # people, then organisations founded 25-60 years after their founder's birth, books 20-70 after their author's
    years = set()
    for p, y in zip(person, distinct_years(rng, len(person), FIRST_YEAR, YEAR_SPAN, years)):
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
    return World(seed=seed, entities=entities, words=words)


# ----------------------------------------------------------------------------- questions
def composition_questions(world, max_hops=4):
    """Every chain of 1..max_hops lookups from every entity, without revisiting an entity (so no "X's employer's
    founder" that is X again). Years end a chain."""
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
            out.append(Question(composition_text(start, chain), str(value), len(chain), "composition", lookups))
            if isinstance(value, str) and len(chain) < max_hops:
                walk(start, value, chain, seen + [value])

    for e in world.entities:
        walk(e.name, e.name, [], [e.name])
    return out


def comparison_questions(world, rng, max_per_type=MAX_COMPARISONS):
    """One question per unordered pair of same-type entities (at most max_per_type pairs drawn at random per
    type, pairs with a held-out entity first so that dev and test have enough), in an order drawn at random."""
    out = []
    for t, (rel, text) in COMPARISONS.items():
        ents = world.of_type(t)
        pairs = [(i, j) for i in range(len(ents)) for j in range(i + 1, len(ents))
                 if {ents[i].split, ents[j].split} != set(HELD_OUT)]  # one held-out split per question at most
        held = [p for p in pairs if ents[p[0]].held_out or ents[p[1]].held_out]
        rest = [p for p in pairs if not (ents[p[0]].held_out or ents[p[1]].held_out)]
        k = min(len(held), max_per_type // 2)
        pairs = sorted(rng.sample(held, k) + rng.sample(rest, min(len(rest), max_per_type - k)))
        for i, j in pairs:
            a, b = (ents[i], ents[j]) if rng.random() < 0.5 else (ents[j], ents[i])
            win = a if a.facts[rel] < b.facts[rel] else b
            out.append(Question(text.format(a=a.name, b=b.name), win.name, 2, "comparison",
                                [(a.name, rel), (b.name, rel)]))
    return out


def make_questions(world, rng, max_hops=4):
    """All candidate questions, grouped by stratum ("composition", hops) / ("comparison", 2)."""
    strata = {}
    for q in composition_questions(world, max_hops) + comparison_questions(world, rng):
        strata.setdefault((q.type, q.hops), []).append(q)
    return strata


def answer_with(facts, q):
    """q's answer when the world's facts are `facts` ({name: {relation: value}}): the chain is followed again,
    so a changed fact can lead to other entities. None if there is none (the chain breaks, or a comparison's
    two years are missing, not years, or equal)."""
    if q.type == "comparison":
        (a, rel), (b, _) = q.lookups
        ya, yb = facts.get(a, {}).get(rel), facts.get(b, {}).get(rel)
        if not (isinstance(ya, int) and isinstance(yb, int)) or ya == yb:  # a year missing, or not a year
            return None
        return a if ya < yb else b
    cur = q.lookups[0][0]
    for _, rel in q.lookups:
        if rel not in facts.get(cur, {}):
            return None
        cur = facts[cur][rel]
    return str(cur)


def observed_answer(world_json, q, observations):
    """q's answer in the world as a rollout saw it: the facts its search results state (`observations`: the
    texts between the result tags, the tool's or, in simulated RL, its own), and the known entities' facts,
    which the model read in pretraining. None where the chain breaks there: a fact of an entity that is
    neither known nor looked up is not something the model could know. world_json: world.json as loaded."""
    facts = {e["name"]: dict(e["facts"]) for e in world_json["entities"] if e["known"]}
    seen = set()
    for text in observations:
        for rel, subject, value in parse_facts(text):
            if (subject, rel) not in seen:  # the first statement of a fact is the one read
                seen.add((subject, rel))
                facts.setdefault(subject, {})[rel] = int(value) if value.isdigit() else value
    return answer_with(facts, q)


def unknown_lookups(world, q):
    return sum(not world.by_name[name].known for name, _ in q.lookups)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    args = ap.parse_args()
    w = make_world(args.seed)
    prng = random.Random(args.seed)
    for split in SPLITS:
        e = next(e for e in w.entities if e.split == split)
        print(page(e.name, e.facts, prng), f"| {split}\n")
    strata = make_questions(w, random.Random(args.seed))
    for key, qs in sorted(strata.items()):
        print(key, len(qs), "e.g.", qs[0].question, "->", qs[0].answer)
