"""Built-in, seeded prompt generators: the offline sources of `curate build`.

Three generators, one per criterion:

- ``compositional`` (semantic): the eight T2I-CompBench categories: colour, shape and texture bound
  to nouns, 2D and 3D spatial relations, interactions, counts, and sentences that mix them.
- ``text_rendering`` (text): a subject or carrier showing a quoted word or short phrase; the quoted
  string goes verbatim into ``rendered_text``.
- ``quality`` (quality): aesthetic-caption prompts, subject x setting x medium x lighting x framing.

Each fills templates from the project's lexicons (``curate/lexicons/*.yaml``) with
``random.Random`` seeded by (generator, category, seed), and keeps a draw only if its
``dedup_key`` is new, so ``generate`` returns exactly ``n`` distinct prompts, the same ones for the
same arguments, or raises ``ValueError``.
"""

from __future__ import annotations

import functools
import importlib.resources
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from math import prod

import yaml

from core.records import CATEGORIES, Prompt, dedup_key

COMPOSITIONAL_CATEGORIES = CATEGORIES[:8]  # all but text_rendering and general
CRITERION_OF = {"compositional": "semantic", "text_rendering": "text", "quality": "quality"}

# A category gives up when this many draws in a row per prompt still asked for have not found
# enough new dedup keys: it means the request is close to the category's real size.
_DRAWS_PER_PROMPT = 20


# --------------------------------------------------------------------------- lexicons and grammar


@functools.cache
def load_lexicon(name: str) -> dict:
    """One lexicon file, parsed. Every leaf must be a string (YAML turns a bare `no` into False)."""
    path = importlib.resources.files("curate") / "lexicons" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    _check_strings(data, name)
    return data


def _check_strings(node, where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _check_strings(value, f"{where}.{key}")
    elif isinstance(node, list):
        for item in node:
            _check_strings(item, where)
    elif not isinstance(node, str):
        raise ValueError(f"lexicon {where}: {node!r} is not a string (quote it in the YAML)")


def _unique(items) -> list[str]:
    """Order-preserving de-duplication of a word list (a lexicon may repeat an entry)."""
    return list(dict.fromkeys(items))


# Letters whose names start with a vowel sound: "an L-shaped sofa", "an LED display", "an x-ray".
_VOWEL_SOUND_LETTERS = frozenset("aefhilmnorsx")
# Vowel-letter words said with a consonant sound ("a unicorn", "a ukulele", "a eucalyptus") ...
_A_PREFIXES = ("uni", "use", "usu", "uten", "util", "ukul", "eu", "ewe", "one", "once")
_AN_DESPITE_PREFIX = ("unim", "unin", "unid")  # ... but "an uninvited", "an unidentified"
# ... and consonant-letter words said with a vowel sound ("an hourglass", "an honest").
_AN_PREFIXES = ("hour", "honest", "honor", "honour", "heir")


def with_article(phrase: str) -> str:
    """`phrase` with "a" or "an" chosen by how its first word sounds."""
    head = phrase.split(" ", 1)[0].split("-", 1)[0]
    if head[:1].isdigit():  # "an 8k photograph", "an 11-year-old", "a 35mm film photograph"
        an = head.startswith("8") or (head[:2] in ("11", "18") and not head[2:3].isdigit())
    elif len(head) == 1 or (head.isupper() and len(head) <= 4):  # read letter by letter
        an = head[0].lower() in _VOWEL_SOUND_LETTERS
    else:
        word = head.lower()
        if word.startswith(_AN_PREFIXES):
            an = True
        elif word.startswith(_A_PREFIXES) and not word.startswith(_AN_DESPITE_PREFIX):
            an = False
        else:
            an = word[0] in "aeiou"
    return ("an " if an else "a ") + phrase


def pluralize(noun: str, irregular: dict[str, str]) -> str:
    """Plural of a (possibly multi-word) noun: the whole noun or its last word may be irregular."""
    if noun in irregular:
        return irregular[noun]
    head, _, last = noun.rpartition(" ")
    if last in irregular:
        last = irregular[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def _sentence(text: str) -> str:
    """A template ending in "." is a sentence: capitalise its first letter (never a quote's)."""
    return text[0].upper() + text[1:] if text.endswith(".") and text[:1].isalpha() else text


# --------------------------------------------------------------------------- the template engine

_FIELD_ORDER = (
    # Fields are filled in this order, so a field can depend on one drawn before it
    # (an action on its agent, "the_x" on "x", rel2 on rel, {words} on {q}).
    "agent", "the_agent", "x", "the_x", "y", "the_y", "z", "the_z", "m",
    "subject", "handheld", "wearable", "scene", "object", "q", "q2", "words",
    "rel", "rel2", "rel3d", "verb", "action", "adverb", "setting",
    "medium", "a_medium", "style", "lighting", "composition", "shot", "detail", "detail2",
)  # fmt: skip
_RANK = {name: i for i, name in enumerate(_FIELD_ORDER)}
_OBJECT_VARS = ("x", "y", "z", "m")


def _var(name: str) -> str:
    """The draw a field shows: "the_x" shows x, "a_medium" shows medium, "Medium" medium."""
    return _base(name).removeprefix("the_").removeprefix("a_")


def _base(name: str) -> str:
    """A capitalised field name ("{Medium}", starting a sentence) fills like its lower-case one."""
    return name[:1].lower() + name[1:]


@dataclass
class _Draw:
    """What one template fill produced besides its text."""

    tags: set[str]
    rendered: list[str] = field(default_factory=list)
    values: dict[str, object] = field(default_factory=dict)  # per-draw memory shared by fields
    nouns: set[str] = field(default_factory=set)  # head nouns already used (objects stay distinct)


Field = Callable[[random.Random, _Draw], str]


class _Category:
    """A set of templates and the fields that fill them; `space` is an upper bound on distinct texts.

    `sizes` gives the number of distinct values of each drawn variable (see `_var`); a template's
    share of the space is the product over its variables.
    """

    def __init__(self, name: str, templates: list[str], fields: dict[str, Field], sizes: dict[str, int]):
        self.name = name
        self.fields = fields
        self.templates: list[tuple[str, tuple[str, ...]]] = []
        for template in templates:
            names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            unknown = sorted(f for f in names if _base(f) not in fields)
            if unknown:
                raise ValueError(f"{name}: template {template!r} uses unknown field(s) {unknown}")
            self.templates.append((template, tuple(sorted(names, key=lambda f: _RANK[_base(f)]))))
        self.space = sum(prod(sizes[v] for v in {_var(f) for f in names}) for _, names in self.templates)

    def draw(self, rng: random.Random) -> tuple[str, _Draw]:
        template, names = rng.choice(self.templates)
        d = _Draw(tags={self.name})
        values = {}
        for name in names:
            value = self.fields[_base(name)](rng, d)
            values[name] = value[:1].upper() + value[1:] if name[:1].isupper() else value
        return _sentence(template.format_map(values)), d


def _object_fields(obj: Callable[[random.Random, _Draw, str], tuple[str, str]], article: bool) -> dict[str, Field]:
    """Fields x, y, z, m (and the_x ...) from `obj(rng, d, var) -> (phrase, head noun)`; x, y, z
    take "a"/"an" when `article` is set.

    Each variable is drawn once per prompt and shows the same phrase under "x" and "the_x"; head
    nouns are kept distinct within a prompt ("a cup next to a cup" is redrawn)."""

    def phrase(rng: random.Random, d: _Draw, var: str) -> str:
        if var not in d.values:
            for _ in range(8):
                text, noun = obj(rng, d, var)
                if noun not in d.nouns:
                    break
            d.nouns.add(noun)
            d.values[var] = text
        return d.values[var]

    fields: dict[str, Field] = {}
    for var in _OBJECT_VARS:
        if article and var != "m":  # m is a count: "three cups", never "a three cups"
            fields[var] = lambda rng, d, v=var: with_article(phrase(rng, d, v))
        else:
            fields[var] = lambda rng, d, v=var: phrase(rng, d, v)
        fields[f"the_{var}"] = lambda rng, d, v=var: "the " + phrase(rng, d, v)
    return fields


def _pick(words: list[str], tag: str | None = None) -> Field:
    def pick(rng: random.Random, d: _Draw) -> str:
        if tag:
            d.tags.add(tag)
        return rng.choice(words)

    return pick


def _pick_other(words: list[str], other: str, tag: str | None = None) -> Field:
    """A word different from the one field `other` drew in this prompt ("rel2" vs "rel")."""

    def pick(rng: random.Random, d: _Draw) -> str:
        if tag:
            d.tags.add(tag)
        word = rng.choice(words)
        while word == d.values.get(other) and len(words) > 1:
            word = rng.choice(words)
        return word

    return pick


def _remember(name: str, f: Field) -> Field:
    def pick(rng: random.Random, d: _Draw) -> str:
        d.values[name] = value = f(rng, d)
        return value

    return pick


# --------------------------------------------------------------------------- compositional


class _Nouns:
    """Nouns, their groups, and the attribute bindings the groups allow."""

    def __init__(self) -> None:
        objects, attrs = load_lexicon("objects"), load_lexicon("attributes")
        self.plurals: dict[str, str] = objects.get("plurals", {})
        self.groups: dict[str, set[str]] = {}
        for group, nouns in objects["groups"].items():
            for noun in nouns:
                self.groups.setdefault(noun, set()).add(group)
        self.all = list(self.groups)
        every = set(objects["groups"]) - {"people"}

        def bind(entries: list[dict]) -> dict[str, list[str]]:
            """noun -> the words of `entries` whose groups include one of the noun's groups."""
            out: dict[str, list[str]] = {noun: [] for noun in self.all}
            for entry in entries:
                groups = set(entry["groups"])
                if "all" in groups:
                    groups = (groups - {"all"}) | every
                unknown = groups - set(objects["groups"])
                if unknown:
                    raise ValueError(f"attributes.yaml: {entry['word']!r} names unknown group(s) {sorted(unknown)}")
                for noun in self.all:
                    if self.groups[noun] & groups and entry["word"] != noun:
                        out[noun].append(entry["word"])
            return out

        colors = _unique(attrs["colors"])
        self.attrs: dict[str, dict[str, list[str]]] = {  # attribute kind -> noun -> words
            "size": bind(attrs["sizes"]),
            "shape": bind(attrs["shapes"]),
            "color": bind([{"word": c, "groups": ["all"]} for c in colors]),
            "pattern": bind(attrs["patterns"]),
            "material": bind(attrs["materials"]),
        }
        # Flat lists of every allowed binding, so sampling is uniform over bindings.
        self.pairs = {kind: [(w, n) for n, ws in by_noun.items() for w in ws] for kind, by_noun in self.attrs.items()}
        self.size_shape = [(s, h, n) for h, n in self.pairs["shape"] for s in self.attrs["size"][n]]
        self.tinted = set(attrs["tinted_materials"])
        # For complex prompts: per noun, the attribute kinds it can take.
        self.kinds = {n: [k for k in self.attrs if self.attrs[k][n]] for n in self.all}
        self.rich_space = sum(
            sum(len(self.attrs[k][n]) for k in self.kinds[n])
            + sum(len(self.attrs[a][n]) * len(self.attrs[b][n]) for a, b in combinations(self.kinds[n], 2))
            for n in self.all
        )

    def plural(self, noun: str) -> str:
        return pluralize(noun, self.plurals)


# Which category tag an attribute kind adds ("a tiny cup" is also a shape prompt).
_KIND_TAG = {"size": "shape", "shape": "shape", "color": "color", "pattern": "texture", "material": "texture"}


def _compositional() -> dict[str, _Category]:
    lex = load_lexicon("compositional")
    nouns = _Nouns()
    templates = lex["templates"]
    rel2d, rel3d = _unique(lex["relations_2d"]), _unique(lex["relations_3d"])
    counts = [(w, i + 1) for i, w in enumerate(lex["numbers"]["words"])]
    digits = [(w, i + 1) for i, w in enumerate(lex["numbers"]["digits"])]
    cats: dict[str, _Category] = {}

    def pair_obj(kind: str) -> Callable:
        pairs = nouns.pairs[kind]

        def obj(rng, d, var):
            word, noun = rng.choice(pairs)
            return f"{word} {noun}", noun

        return obj

    # color / texture: one attribute bound to each noun.
    for cat, kind in (("color", "color"), ("texture", "material")):
        fields = _object_fields(pair_obj(kind), article=True)
        cats[cat] = _Category(cat, templates[cat], fields, {v: len(nouns.pairs[kind]) for v in "xy"})

    # shape: a size, a shape, or both ("a tiny round clock").
    sized, shaped, both = nouns.pairs["size"], nouns.pairs["shape"], nouns.size_shape

    def shape_obj(rng, d, var):
        r = rng.random()
        if r < 0.4:
            word, noun = rng.choice(shaped)
            return f"{word} {noun}", noun
        if r < 0.7:
            size, shape, noun = rng.choice(both)
            return f"{size} {shape} {noun}", noun
        word, noun = rng.choice(sized)
        return f"{word} {noun}", noun

    space = len(sized) + len(shaped) + len(both)
    cats["shape"] = _Category("shape", templates["shape"], _object_fields(shape_obj, True), {"x": space, "y": space})

    # spatial / 3d_spatial: plain nouns, now and then with a colour.
    colored = nouns.attrs["color"]

    def plain_obj(rng, d, var):
        noun = rng.choice(nouns.all)
        if colored[noun] and rng.random() < 0.15:
            d.tags.add("color")
            return f"{rng.choice(colored[noun])} {noun}", noun
        return noun, noun

    plain_space = len(nouns.all) + len(nouns.pairs["color"])
    for cat, rel_name, rels in (("spatial", "rel", rel2d), ("3d_spatial", "rel3d", rel3d)):
        fields = _object_fields(plain_obj, True) | {rel_name: _pick(rels)}
        cats[cat] = _Category(cat, templates[cat], fields, {"x": plain_space, "y": plain_space, rel_name: len(rels)})

    # numeracy: a count bound to a noun, plural when the count is not one; sometimes a colour or size.
    def quantity(rng, d, var):
        d.tags.add("numeracy")
        word, count = rng.choice(counts if rng.random() < 0.7 else digits)
        while var == "m" and count < 2:
            word, count = rng.choice(counts if rng.random() < 0.7 else digits)
        noun = rng.choice(nouns.all)
        phrase = noun if count == 1 else nouns.plural(noun)
        r = rng.random()
        if r < 0.25 and colored[noun]:
            d.tags.add("color")
            phrase = f"{rng.choice(colored[noun])} {phrase}"
        elif r < 0.35 and nouns.attrs["size"][noun]:
            d.tags.add("shape")
            phrase = f"{rng.choice(nouns.attrs['size'][noun])} {phrase}"
        return f"{word} {phrase}", noun

    n_counts = len(counts) + len(digits)
    q_space = len(nouns.all) + len(nouns.pairs["color"]) + len(nouns.pairs["size"])
    numeracy_sizes = {v: n_counts * q_space for v in "xyz"} | {"m": (n_counts - 2) * q_space}  # m: 2 and up
    cats["numeracy"] = _Category("numeracy", templates["numeracy"], _object_fields(quantity, False), numeracy_sizes)

    # non_spatial: an agent doing something, maybe somewhere.
    agent, agent_space = _agents(lex["non_spatial"])
    ns = lex["non_spatial"]
    ns_fields = agent | {"adverb": _pick(_unique(ns["adverbs"])), "setting": _pick(_unique(ns["settings"]))}
    ns_sizes = {"agent": agent_space, "action": 1, "adverb": len(ns["adverbs"]), "setting": len(ns["settings"])}
    cats["non_spatial"] = _Category("non_spatial", templates["non_spatial"], ns_fields, ns_sizes)

    # complex: objects with one or two attributes, and several relations in one sentence.
    order = list(_KIND_TAG)  # size, shape, color, pattern, material: English adjective order

    def rich_obj(rng, d, var):
        if var == "m":
            return quantity(rng, d, var)
        noun = rng.choice(nouns.all)
        kinds = nouns.kinds[noun]
        how_many = min(len(kinds), rng.choice((1, 2, 2)))
        chosen = {kind: rng.choice(nouns.attrs[kind][noun]) for kind in rng.sample(kinds, how_many)}
        if chosen.get("material") in nouns.tinted:
            chosen.pop("color", None)
        for kind in chosen:
            d.tags.add(_KIND_TAG[kind])
        return " ".join([*(chosen[k] for k in order if k in chosen), noun]), noun

    cx_fields = (
        _object_fields(rich_obj, True)
        | {
            "rel": _remember("rel", _pick(rel2d, "spatial")),
            "rel2": _pick_other(rel2d, "rel", "spatial"),
            "rel3d": _pick(rel3d, "3d_spatial"),
            "verb": _pick(_unique(lex["verbs"])),
        }
        | {name: _tagged(f, "non_spatial") for name, f in agent.items()}
    )
    cx_sizes = {
        **{v: nouns.rich_space for v in "xyz"},
        "m": numeracy_sizes["m"],
        "rel": len(rel2d),
        "rel2": len(rel2d) - 1,
        "rel3d": len(rel3d),
        "verb": len(lex["verbs"]),
        "agent": agent_space,
        "action": 1,
    }
    cats["complex"] = _Category("complex", templates["complex"], cx_fields, cx_sizes)
    return {c: cats[c] for c in COMPOSITIONAL_CATEGORIES}


def _tagged(f: Field, tag: str) -> Field:
    def pick(rng: random.Random, d: _Draw) -> str:
        d.tags.add(tag)
        return f(rng, d)

    return pick


_SUBSLOT = re.compile(r"\{(\w+)\}")


def _agents(ns: dict) -> tuple[dict[str, Field], int]:
    """Fields agent / the_agent / action, drawn together so the action fits the agent, and the
    number of distinct (agent, action) pairs."""
    subslots = {
        "pet": _unique(ns["pets"]),
        "farm_animal": _unique(ns["farm_animals"]),
        "food": _unique(ns["foods"]),
        "instrument": _unique(ns["instruments"]),
        "sport_ball": _unique(ns["sport_balls"]),
    }

    def expand(action: str, rng: random.Random) -> str:
        def fill(m: re.Match) -> str:
            name = m.group(1)
            word = rng.choice(subslots[_var(name)])
            return with_article(word) if name.startswith("a_") else word

        return _SUBSLOT.sub(fill, action) if "{" in action else action

    def n_ways(action: str) -> int:
        return prod(len(subslots[_var(s)]) for s in _SUBSLOT.findall(action))

    for action in [*ns["human_actions"], *(a for acts in ns["professions"].values() for a in acts)]:
        for slot in _SUBSLOT.findall(action):
            if _var(slot) not in subslots:
                raise ValueError(f"compositional.yaml: action {action!r} uses unknown sub-slot {{{slot}}}")

    human = _unique(ns["human_actions"])
    people, adjectives = _unique(ns["people"]), _unique(ns["person_adjectives"])
    animal_adjectives = _unique(ns["animal_adjectives"])
    professions = {p: _unique(acts) for p, acts in ns["professions"].items()}
    animals = [(_unique(g["agents"]), _unique(g["actions"])) for g in ns["animals"]]
    human_ways = sum(n_ways(a) for a in human)
    space = (
        len(people) * (1 + len(adjectives)) * human_ways
        + sum((1 + len(adjectives)) * (human_ways + sum(n_ways(a) for a in acts)) for acts in professions.values())
        + sum(len(names) * (1 + len(animal_adjectives)) * sum(n_ways(a) for a in acts) for names, acts in animals)
    )
    # Flat (agent, action) lists, so a group with many agents and actions is drawn more often.
    own_pairs = [(p, a) for p, acts in professions.items() for a in acts]
    animal_pairs = [(name, a) for names, acts in animals for name in names for a in acts]
    profession_names = list(professions)

    def draw(rng: random.Random, d: _Draw) -> None:
        r = rng.random()
        if r < 0.25:  # an animal
            (name, action), adjs = rng.choice(animal_pairs), animal_adjectives
        else:
            if r < 0.45:  # a profession doing its own thing
                name, action = rng.choice(own_pairs)
            elif r < 0.6:
                name, action = rng.choice(profession_names), rng.choice(human)
            else:
                name, action = rng.choice(people), rng.choice(human)
            adjs = adjectives
        if rng.random() < 0.35:
            name = f"{rng.choice(adjs)} {name}"
        d.values["agent"] = name
        d.values["action"] = expand(action, rng)

    def agent_field(definite: bool) -> Field:
        def pick(rng: random.Random, d: _Draw) -> str:
            if "agent" not in d.values:
                draw(rng, d)
            name = d.values["agent"]
            return f"the {name}" if definite else with_article(name)

        return pick

    def action(rng: random.Random, d: _Draw) -> str:
        if "agent" not in d.values:
            draw(rng, d)
        return d.values["action"]

    return {"agent": agent_field(False), "the_agent": agent_field(True), "action": action}, space


# --------------------------------------------------------------------------- text rendering

# Straight single, straight double, curly single, curly double; with weights.
_QUOTES = (("'", "'"), ('"', '"'), ("\u2018", "\u2019"), ("\u201c", "\u201d"))
_QUOTE_WEIGHTS = (40, 30, 15, 15)


def _text_rendering() -> dict[str, _Category]:
    lex = load_lexicon("text_rendering")
    words = _unique(lex["words"].split())
    phrases = _unique(line.strip() for line in lex["phrases"].splitlines() if line.strip())
    groups = {kind: _unique(names) for kind, names in lex["subjects"].items()}
    adjectives = {kind: _unique(lex["subject_adjectives"][kind]) for kind in groups}
    kinds = list(groups)

    def subject(rng: random.Random, d: _Draw) -> str:
        kind = rng.choice(kinds)
        name = rng.choice(groups[kind])
        if rng.random() < 0.3:
            name = f"{rng.choice(adjectives[kind])} {name}"
        return with_article(name)

    def quoted(own: str, other: str | None) -> Field:
        def pick(rng: random.Random, d: _Draw) -> str:
            while True:
                text = rng.choice(phrases) if rng.random() < 0.2 else rng.choice(words)
                r = rng.random()  # mostly as written; some Capitalised, some UPPER
                text = text if r < 0.7 else text[:1].upper() + text[1:] if r < 0.85 else text.upper()
                if other is None or text.lower() != d.values[other].lower():
                    break
            quotes = rng.choices(_QUOTES, _QUOTE_WEIGHTS)[0]  # 'don't panic' too, as people write it
            d.values[own] = text
            d.rendered.append(text)
            return f"{quotes[0]}{text}{quotes[1]}"

        return pick

    def the_words(rng: random.Random, d: _Draw) -> str:
        return "the words" if " " in d.values["q"] else "the word"

    carriers = {kind: _unique(names) for kind, names in lex["carriers"].items()}
    fields: dict[str, Field] = {
        "subject": subject,
        "q": quoted("q", None),
        "q2": quoted("q2", "q"),
        "words": the_words,
        **{kind: (lambda rng, d, c=names: with_article(rng.choice(c))) for kind, names in carriers.items()},
    }
    n_subjects = sum(len(names) * (1 + len(adjectives[k])) for k, names in groups.items())
    sizes = {"subject": n_subjects, "q": len(words) + len(phrases), "q2": len(words) + len(phrases), "words": 1}
    sizes |= {kind: len(names) for kind, names in carriers.items()}
    templates = [
        form.replace("{frame}", frame)
        for kind in ("subject", "object")
        for form in lex["forms"][kind]
        for frame in lex[f"{kind}_frames"]
    ]
    return {"text_rendering": _Category("text_rendering", templates, fields, sizes)}


# --------------------------------------------------------------------------- quality


def _quality() -> dict[str, _Category]:
    lex = load_lexicon("quality")
    figures, places = _unique(lex["figures"]), _unique(lex["places"])
    stills, surfaces = _unique(lex["still_lifes"]), _unique(lex["surfaces"])
    scenes = _unique(lex["scenes"])

    def subject(rng: random.Random, d: _Draw) -> str:
        r = rng.random()
        if r < 0.55:
            return f"{rng.choice(figures)} {rng.choice(places)}"
        if r < 0.7:
            return f"{rng.choice(stills)} {rng.choice(surfaces)}"
        return rng.choice(scenes)

    media = _unique(lex["media"])
    details = _unique(lex["details"])
    fields: dict[str, Field] = {
        "subject": subject,
        "medium": _pick(media),
        "a_medium": lambda rng, d: with_article(rng.choice(media)),
        "style": _pick(_unique(lex["styles"])),
        "lighting": _pick(_unique(lex["lighting"])),
        "composition": _pick(_unique(lex["composition"])),
        "shot": _pick(_unique(lex["shots"])),
        "detail": _remember("detail", _pick(details)),
        "detail2": _pick_other(details, "detail"),
    }
    sizes = {
        "subject": len(figures) * len(places) + len(stills) * len(surfaces) + len(scenes),
        "medium": len(media),
        "style": len(_unique(lex["styles"])),
        "lighting": len(_unique(lex["lighting"])),
        "composition": len(_unique(lex["composition"])),
        "shot": len(_unique(lex["shots"])),
        "detail": len(details),
        "detail2": len(details) - 1,
    }
    return {"general": _Category("general", lex["templates"], fields, sizes)}


# --------------------------------------------------------------------------- public API


class Generator:
    """A named generator: its criterion, its categories, and `generate`."""

    def __init__(self, name: str, build: Callable[[], dict[str, _Category]], categories: tuple[str, ...]):
        self.name = name
        self.criterion = CRITERION_OF[name]
        self.categories = categories
        self._build = build

    @functools.cached_property
    def _cats(self) -> dict[str, _Category]:
        cats = self._build()
        assert tuple(cats) == self.categories, (tuple(cats), self.categories)  # a programming error
        return cats

    def capacity(self, category: str) -> int:
        """Upper bound on the distinct prompts one category can yield (distinct template fills;
        dedup merges some, e.g. "A and B" with "B and A")."""
        return self._cats[self._check_category(category)].space

    def draw(self, category: str, rng: random.Random) -> str:
        """One raw draw, not deduplicated (for benchmarks)."""
        return self._cats[self._check_category(category)].draw(rng)[0]

    def _check_category(self, category: str) -> str:
        if category not in self.categories:
            raise ValueError(
                f"generator {self.name!r} has no category {category!r}; choose from {', '.join(self.categories)}"
            )
        return category

    def generate(self, n: int, seed: int, categories: list[str] | None = None) -> list[Prompt]:
        """Exactly `n` prompts with distinct dedup keys, split evenly over `categories` (all by
        default; the remainder goes to the first ones, in this generator's category order)."""
        if n < 0:
            raise ValueError(f"generator {self.name!r}: n must be >= 0, got {n}")
        if categories is None:
            chosen = list(self.categories)
        else:
            wanted = {self._check_category(c) for c in categories}
            if not wanted:
                raise ValueError(f"generator {self.name!r}: empty category list")
            chosen = [c for c in self.categories if c in wanted]
        share, extra = divmod(n, len(chosen))
        quotas = {c: share + (i < extra) for i, c in enumerate(chosen)}
        for c, k in quotas.items():
            if k > self.capacity(c):
                raise ValueError(
                    f"generator {self.name!r}: {k:,} prompts asked of category {c!r}, "
                    f"which can produce at most about {self.capacity(c):,}"
                )
        seen: set[str] = set()
        out: list[Prompt] = []
        for c, k in quotas.items():
            out.extend(self._fill(c, k, seed, seen))
        return out

    def _fill(self, category: str, k: int, seed: int, seen: set[str]) -> list[Prompt]:
        cat = self._cats[category]
        rng = random.Random(f"{self.name}:{category}:{seed}")
        source = f"generator:{self.name}"
        out: list[Prompt] = []
        draws, limit = 0, _DRAWS_PER_PROMPT * k + 1000
        while len(out) < k:
            if draws >= limit:
                raise ValueError(
                    f"generator {self.name!r}: category {category!r} found only {len(out):,} distinct "
                    f"prompts of {k:,} in {draws:,} draws; ask for fewer"
                )
            draws += 1
            text, d = cat.draw(rng)
            key = dedup_key(text)
            if key in seen:
                continue
            seen.add(key)
            tags = [category, *(t for t in CATEGORIES if t in d.tags and t != category)]
            out.append(
                Prompt(
                    text=text,
                    criterion=self.criterion,
                    source=source,
                    category=category,
                    tags=tags,
                    rendered_text=d.rendered,
                )
            )
        return out


GENERATORS: dict[str, Generator] = {
    "compositional": Generator("compositional", _compositional, COMPOSITIONAL_CATEGORIES),
    "text_rendering": Generator("text_rendering", _text_rendering, ("text_rendering",)),
    "quality": Generator("quality", _quality, ("general",)),
}


def generate(name: str, n: int, seed: int, categories: list[str] | None = None) -> list[Prompt]:
    """`n` distinct prompts from generator `name` (see GENERATORS), deterministic in its arguments."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose from {', '.join(GENERATORS)}")
    return GENERATORS[name].generate(n, seed, categories)
