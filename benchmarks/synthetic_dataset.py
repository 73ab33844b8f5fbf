"""A synthetic, non-MMLU routing dataset in the generic layout (docs/data.md): prompts of ten task families, LLMs
with latent skills, correctness from an IRT model. **Synthetic**: no LLM answered these prompts; nothing is
downloaded, and one seed gives the same files on every machine.

    python -m benchmarks.synthetic_dataset                       # data/bench/synthetic_tasks, 5,000 prompts
    python -m benchmarks.synthetic_dataset OUT_DIR --seed 1 --prompts 3000

The generative model
--------------------
Prompts. Ten task families (:data:`FAMILIES`) whose text differs, so a sentence embedder clusters them:
arithmetic word problems, code-writing requests (six languages), SQL over generated schemas, translation
requests, summaries of generated paragraphs, calendar reasoning, unit conversion, string manipulation,
factual-lookup questions and creative-writing requests. Family sizes are drawn (Dirichlet around equal shares).
Each prompt draws a visible difficulty ``d ~ U(0, 1)`` that its text shows where natural (more digits and steps,
more tables, longer sentences and paragraphs, rarer languages and entities, harder forms and constraints), and an
IRT difficulty ``b = c_f + 2.5 (d - 1/2) + N(0, 0.6^2)``: the family's offset ``c_f`` plus a hidden part the text
does not show.

LLMs. Each of the 24 LLMs (:data:`ARCHETYPES`: frontier and mid-size generalists, code, math, language and
knowledge specialists, small models) has a general ability ``g`` and specialisations ``s`` over five skills
(math, code, language, knowledge, reasoning), jittered per seed. Its ability on family ``f`` is the low-rank
``theta[m, f] = g[m] + L[f] . s[m] + N(0, 0.25^2)`` with the family's skill loadings ``L[f]``.

Correctness. A 2PL IRT draw, ``P(correct) = sigmoid(a_f (theta[m, f] - k_m b))`` with the family's
discrimination ``a_f``. ``k_m`` is 1, except for small models (1.6-2.0): they match larger ones on easy prompts
(``b < 0``) and fall off fast on hard ones, so a router gains by sending them only the easy prompts.

Cost. A price per million tokens, ``log10 usd_per_mtok = -1.0 + 0.75 g + 0.1 sum(s) + N(0, 0.25^2)``:
correlated with general ability but not set by it (specialists are cheap for what they do well). Each answer's
tokens: the prompt's (``len / 4``) in, and out ``base_f x verbosity_m x (1 + d) x LogNormal(0, 0.35)``, so the
cost per query varies by family, LLM, difficulty and answer.

Files (under OUT_DIR): ``prompts.jsonl`` (``prompt_id, prompt, category`` = the family, ``reference`` where the
answer is computable, ``difficulty``), ``results.parquet`` (``model, prompt_id, score, input_tokens,
output_tokens``), ``models.csv`` (``model, usd_per_mtok, archetype``), ``spec.yaml`` (results only), and the
ground truth ``abilities.csv`` (``model, family, ability``) for checking estimators.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.mmlu_pro_data import DATA_HOME

DEFAULT_OUT = DATA_HOME / "bench" / "synthetic_tasks"
DEFAULT_PROMPTS = 5000
MIN_PROMPTS = 50
SKILLS = ("math", "code", "language", "knowledge", "reasoning")

Rng = np.random.Generator
Generator = Callable[[Rng, float], tuple[str, str | None]]


def _pick(rng: Rng, items: list | tuple, d: float | None = None, spread: float = 0.35):
    """One of ``items``; with ``d``, from around position ``d`` of the list (later items are harder)."""
    if d is None:
        return items[int(rng.integers(len(items)))]
    centre = d * (len(items) - 1)
    index = int(np.clip(round(centre + rng.normal(0, spread * len(items) / 3)), 0, len(items) - 1))
    return items[index]


def _number(rng: Rng, digits: int) -> int:
    return int(rng.integers(10 ** (digits - 1), 10**digits))


# ---- prompt families -----------------------------------------------------------------------------------------
NAMES = ("Ava", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Keiko", "Luis")
GOODS = ("apples", "marbles", "books", "stamps", "bolts", "cupcakes", "tickets", "seedlings", "coins", "bricks")


def arithmetic(rng: Rng, d: float) -> tuple[str, str | None]:
    """A multi-step word problem: more digits and more steps when harder."""
    digits, steps = 1 + round(d * 3), 1 + round(d * 4)
    name, goods = _pick(rng, NAMES), _pick(rng, GOODS)
    value = _number(rng, digits + 1)
    text = [f"{name} has {value} {goods}."]
    for _ in range(steps):
        op = _pick(rng, ("+", "-", "*") if value < 10**6 else ("+", "-"))
        x = _number(rng, max(1, digits - 1) if op == "*" else digits)
        if op == "-" and x > value:
            op = "+"
        if op == "+":
            text.append(f"Then {_pick(rng, NAMES)} gives {name} another {x} {goods}.")
            value += x
        elif op == "-":
            text.append(f"{name} sells {x} of the {goods} at the market.")
            value -= x
        else:
            text.append(f"A delivery multiplies the stock of {goods} by {x}.")
            value *= x
    text.append(f"How many {goods} does {name} have at the end? Show your reasoning.")
    return " ".join(text), str(value)


LANGUAGES_CODE = ("Python", "JavaScript", "Go", "Java", "C++", "Rust")
CODE_TASKS = (
    ("is_even", "returns whether an integer is even"),
    ("reverse_list", "returns a list in reverse order without using a built-in reverse"),
    ("count_vowels", "counts the vowels in a string"),
    ("fizzbuzz", "prints FizzBuzz for the numbers 1 to n"),
    ("is_palindrome", "checks whether a string is a palindrome, ignoring case and punctuation"),
    ("fibonacci", "returns the n-th Fibonacci number in O(log n) time"),
    ("merge_intervals", "merges overlapping intervals given as pairs of integers"),
    ("parse_csv_line", "splits one CSV line into fields, honouring quoted fields with embedded commas"),
    ("top_k_words", "returns the k most frequent words of a text, ties broken alphabetically"),
    ("lru_cache", "implements an LRU cache with get and put in O(1) time"),
    ("dijkstra", "computes shortest path lengths from a source in a weighted directed graph"),
    ("serialize_tree", "serialises a binary tree to a string and parses it back"),
    ("regex_match", "matches a string against a pattern supporting '.' and '*'"),
    ("interval_tree", "implements an interval tree supporting insert, delete and overlap queries"),
    ("rate_limiter", "implements a thread-safe token-bucket rate limiter"),
)
CODE_CONSTRAINTS = (
    "Add a docstring.",
    "Include three unit tests.",
    "Use no external libraries.",
    "Handle empty input gracefully.",
    "Make it generic over the element type.",
    "Avoid recursion.",
    "Explain its time and space complexity.",
)


def code(rng: Rng, d: float) -> tuple[str, str | None]:
    """A code-writing request: a harder task and more constraints when harder."""
    fname, task = _pick(rng, CODE_TASKS, d)
    constraints = rng.choice(CODE_CONSTRAINTS, size=round(d * 3), replace=False)
    text = f"Write a {_pick(rng, LANGUAGES_CODE)} function `{fname}` that {task}. " + " ".join(constraints)
    return text.strip(), None


TABLES = {
    "customers": ("id", "name", "country", "signup_date"),
    "orders": ("id", "customer_id", "total", "created_at", "status"),
    "order_items": ("order_id", "product_id", "quantity", "unit_price"),
    "products": ("id", "name", "category", "price"),
    "employees": ("id", "name", "manager_id", "department_id", "salary"),
    "departments": ("id", "name", "budget"),
}
SQL_ASKS = (
    "lists every row of {t0} where {c0} is not null",
    "counts the rows of {t0} per {c0}",
    "returns the ten largest values of {c0} in {t0} with their {c1}",
    "joins {t0} and {t1} and returns the average {c1} per {c0}, keeping groups with more than 5 rows",
    "finds, for each {c0} in {t0}, the row with the highest {c1}, using a window function",
    "computes a running total of {c1} over {t0} ordered by {c0}, joined with {t1} and {t2}",
    "returns the full management chain above each employee with a recursive common table expression",
)


def sql(rng: Rng, d: float) -> tuple[str, str | None]:
    """A SQL question over a generated schema: more tables and a harder query when harder."""
    names = list(rng.choice(list(TABLES), size=1 + round(d * 3), replace=False))
    schema = "; ".join(f"{t}({', '.join(TABLES[t])})" for t in names)
    cols = rng.choice(TABLES[names[0]], size=2, replace=False)
    tables = {f"t{i}": names[min(i, len(names) - 1)] for i in range(3)}
    ask = _pick(rng, SQL_ASKS, d).format(c0=cols[0], c1=cols[1], **tables)
    dialect = _pick(rng, ("PostgreSQL", "SQLite", "MySQL", "DuckDB"))
    return f"Given the tables {schema}, write a {dialect} query that {ask}.", None


SUBJECTS = ("the old fisherman", "my sister", "the city council", "our neighbour's dog", "the young engineer")
VERBS = ("repaired", "painted", "forgot", "carried", "described", "sold", "discovered", "cancelled")
OBJECTS = ("the wooden bridge", "a small red boat", "the annual festival", "three heavy boxes", "the broken clock")
ADVERBIALS = ("yesterday morning", "before the storm arrived", "without telling anyone", "in the rain", "at dawn")
TARGET_LANGUAGES = (
    "Spanish",
    "French",
    "German",
    "Italian",
    "Portuguese",
    "Dutch",
    "Polish",
    "Turkish",
    "Japanese",
    "Korean",
    "Finnish",
    "Hungarian",
    "Icelandic",
    "Swahili",
    "Basque",
    "Yoruba",
)


def _clause(rng: Rng) -> str:
    return f"{_pick(rng, SUBJECTS)} {_pick(rng, VERBS)} {_pick(rng, OBJECTS)} {_pick(rng, ADVERBIALS)}"


def translation(rng: Rng, d: float) -> tuple[str, str | None]:
    """A translation request: a rarer target language and a longer sentence when harder."""
    clauses = [_clause(rng) for _ in range(1 + round(d * 3))]
    sentence = ", and ".join(clauses)
    sentence = sentence[0].upper() + sentence[1:] + "."
    return f'Translate the following sentence from English into {_pick(rng, TARGET_LANGUAGES, d)}: "{sentence}"', None


TOWNS = ("Marlow", "Eastbrook", "Kelvedon", "Pine Hollow", "Ravensmoor", "Sutterfield")
REPORT_SENTENCES = (
    "The town of {town} reported that its water usage rose by {p} percent over the last year.",
    "Officials attributed the change to {cause}.",
    "A survey of {n} residents found that most supported {measure}.",
    "Critics argued that {measure} would cost about {m} million dollars.",
    "The local school board plans to review the findings in {month}.",
    "Farmers near {town} said the new rules would affect {n} hectares of land.",
    "An independent study had earlier linked the trend to {cause}.",
    "The mayor promised a public hearing before any final decision on {measure}.",
)
CAUSES = ("a prolonged drought", "new housing developments", "leaking pipes", "a growing tourism sector")
MEASURES = ("a tiered pricing scheme", "mandatory rainwater tanks", "a ban on lawn watering", "a new reservoir")


def summarisation(rng: Rng, d: float) -> tuple[str, str | None]:
    """Summarise a generated news paragraph: a longer paragraph and a tighter limit when harder."""
    fill = {
        "town": _pick(rng, TOWNS),
        "cause": _pick(rng, CAUSES),
        "measure": _pick(rng, MEASURES),
        "p": int(rng.integers(2, 40)),
        "n": int(rng.integers(100, 5000)),
        "m": int(rng.integers(2, 90)),
        "month": _pick(rng, ("March", "June", "September", "December")),
    }
    count = 3 + round(d * 9)
    sentences = [REPORT_SENTENCES[i % len(REPORT_SENTENCES)].format(**fill) for i in rng.permutation(count)]
    limit = "one sentence" if d > 0.6 else _pick(rng, ("two sentences", "three bullet points", "50 words"))
    return f"Summarise the following paragraph in {limit}:\n\n" + " ".join(sentences), None


WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def calendar(rng: Rng, d: float) -> tuple[str, str | None]:
    """Date reasoning: longer spans, leap years and business days when harder."""
    start = dt.date(1990, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 40)))
    span = int(rng.integers(1, 10 + 10 ** (1 + 3 * d)))
    kind = _pick(rng, ("weekday", "between", "after", "business"), d)
    if kind == "weekday":
        target = start + dt.timedelta(days=span)
        question = f"If today is {start:%A, %d %B %Y}, what day of the week will it be in {span} days?"
        return question, WEEKDAYS[target.weekday()]
    if kind == "between":
        end = start + dt.timedelta(days=span)
        return f"How many days are there between {start:%d %B %Y} and {end:%d %B %Y}?", str(span)
    if kind == "after":
        weeks = max(1, span // 7)
        target = start + dt.timedelta(weeks=weeks)
        return f"What is the date {weeks} weeks after {start:%B %d, %Y}? Give it as YYYY-MM-DD.", target.isoformat()
    return (
        f"Counting only Monday to Friday, which date is {span} business days after {start:%Y-%m-%d}? "
        "Ignore public holidays.",
        None,
    )


UNITS = (
    ("kilometres", "metres", 1000.0),
    ("hours", "minutes", 60.0),
    ("pounds", "kilograms", 0.45359237),
    ("miles", "kilometres", 1.609344),
    ("gallons (US)", "litres", 3.785411784),
    ("acres", "square metres", 4046.8564224),
    ("miles per hour", "metres per second", 0.44704),
    ("kilowatt-hours", "megajoules", 3.6),
    ("nautical miles", "feet", 6076.11548),
    ("pounds per square inch", "kilopascals", 6.894757),
)


def unit_conversion(rng: Rng, d: float) -> tuple[str, str | None]:
    """Convert a quantity: rarer units and more significant digits when harder."""
    source, target, factor = _pick(rng, UNITS, d)
    decimals = round(d * 4)
    value = round(float(rng.uniform(1, 10 ** (1 + 2 * d))), decimals)
    places = 2 + decimals
    text = f"Convert {value} {source} to {target}. Round to {places} decimal places."
    return text, f"{value * factor:.{places}f}"


WORDS = (
    "banana",
    "keyboard",
    "lighthouse",
    "strawberry",
    "mississippi",
    "parallelogram",
    "quartz",
    "rhythm",
    "bookkeeper",
    "onomatopoeia",
    "syzygy",
    "zucchini",
    "accommodation",
    "embarrassment",
)


def string_manipulation(rng: Rng, d: float) -> tuple[str, str | None]:
    """Character-level tasks: longer strings and compound operations when harder."""
    n_words = 1 + round(d * 5)
    words = [str(w) for w in rng.choice(WORDS, size=n_words, replace=True)]
    s = "".join(words) if d > 0.5 else " ".join(words)
    kind = _pick(rng, ("reverse", "count", "sort", "alternate", "vowels_removed"), d)
    if kind == "reverse":
        return f"Reverse the string '{s}' character by character.", s[::-1]
    if kind == "count":
        letter = str(_pick(rng, sorted(set(s) - {" "})))
        return f"How many times does the letter '{letter}' occur in '{s}'?", str(s.count(letter))
    if kind == "sort":
        return f"Sort these words alphabetically and join them with commas: {' '.join(words)}", ",".join(sorted(words))
    if kind == "alternate":
        out = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(s))
        return f"Rewrite '{s}' with every second character in upper case, starting with the second.", out
    out = "".join(c for c in s if c not in "aeiou")[::-1]
    return f"Remove every vowel from '{s}', then reverse what is left.", out


COUNTRIES = (
    "France",
    "Japan",
    "Brazil",
    "Canada",
    "Egypt",
    "India",
    "Kenya",
    "Norway",
    "Chile",
    "Vietnam",
    "Morocco",
    "Peru",
    "Mongolia",
    "Uruguay",
    "Latvia",
    "Laos",
    "Bhutan",
    "Suriname",
    "Eswatini",
    "Kiribati",
    "Tuvalu",
    "Comoros",
    "Nauru",
    "Palau",
)
ELEMENTS = (
    "hydrogen",
    "carbon",
    "oxygen",
    "iron",
    "copper",
    "silver",
    "gold",
    "neon",
    "sodium",
    "uranium",
    "tungsten",
    "bismuth",
    "gallium",
    "hafnium",
    "rhenium",
    "praseodymium",
    "ytterbium",
    "dysprosium",
    "protactinium",
    "seaborgium",
)
COUNTRY_ASKS = (
    "What is the capital of {x}?",
    "What currency is used in {x}?",
    "What is the official language of {x}?",
    "In which year did {x} adopt its current constitution?",
    "What is the highest mountain in {x}?",
)
ELEMENT_ASKS = (
    "What is the chemical symbol of {x}?",
    "What is the atomic number of {x}?",
    "Who is credited with discovering {x}, and in which year?",
    "What is the melting point of {x} in kelvin?",
)

FACT_LEADS = ("", "Quick question: ", "For a pub quiz: ", "Trivia: ", "I need this for homework. ")
FACT_TAILS = (
    "Answer briefly.",
    "One word or number, please.",
    "Reply with just the answer.",
    "Explain in one sentence.",
)


def factual(rng: Rng, d: float) -> tuple[str, str | None]:
    """A factual lookup: rarer entities and more specific facts when harder."""
    if rng.random() < 0.5:
        subject, asks = _pick(rng, COUNTRIES, d), COUNTRY_ASKS
    else:
        subject, asks = _pick(rng, ELEMENTS, d), ELEMENT_ASKS
    lead, tail = _pick(rng, FACT_LEADS), _pick(rng, FACT_TAILS)
    return f"{lead}{_pick(rng, asks, d).format(x=subject)} {tail}", None


FORMS = (
    "a short poem",
    "a haiku",
    "a limerick",
    "a two-paragraph story",
    "a product description",
    "a sonnet",
    "a villanelle",
    "a dialogue in blank verse",
)
TOPICS = (
    "a lighthouse keeper's last night",
    "autumn in a big city",
    "a robot learning to bake",
    "the first day at a new school",
    "a lost umbrella",
    "the sound of distant trains",
)
STYLES = ("Emily Dickinson", "a noir detective novel", "a children's picture book", "a sports commentator")
CREATIVE_CONSTRAINTS = (
    "Keep it under 100 words.",
    "Include the word 'copper'.",
    "Every line must start with the letter S.",
    "Do not use the letter e anywhere.",
    "End with a twist.",
)


def creative(rng: Rng, d: float) -> tuple[str, str | None]:
    """A creative-writing request: stricter forms and more constraints when harder."""
    text = f"Write {_pick(rng, FORMS, d)} about {_pick(rng, TOPICS)} in the style of {_pick(rng, STYLES)}."
    constraints = rng.choice(CREATIVE_CONSTRAINTS, size=round(d * 2.4), replace=False)
    return " ".join([text, *constraints]), None


@dataclass(frozen=True)
class Family:
    """A task family: its prompts, skill loadings, IRT discrimination and offset, and answer length."""

    name: str
    make: Generator
    loadings: dict[str, float]
    discrimination: float
    offset: float
    output_tokens: float


FAMILIES = (
    Family("arithmetic", arithmetic, {"math": 1.0, "reasoning": 0.3}, 1.6, 0.2, 180),
    Family("code", code, {"code": 1.0}, 1.2, 0.3, 380),
    Family("sql", sql, {"code": 0.8, "reasoning": 0.3}, 1.3, 0.1, 140),
    Family("translation", translation, {"language": 1.0}, 1.0, -0.2, 70),
    Family("summarisation", summarisation, {"language": 0.5}, 0.8, -0.8, 90),
    Family("calendar", calendar, {"reasoning": 1.0, "math": 0.3}, 1.5, 0.4, 120),
    Family("unit_conversion", unit_conversion, {"math": 0.6, "knowledge": 0.4}, 1.3, -0.2, 60),
    Family("string_manipulation", string_manipulation, {"reasoning": 0.6, "code": 0.5}, 1.8, 0.5, 50),
    Family("factual", factual, {"knowledge": 1.0}, 1.1, 0.0, 40),
    Family("creative", creative, {"language": 0.8}, 0.7, -0.3, 420),
)


# ---- LLMs ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Archetype:
    """A kind of LLM: how many, general ability (mean), specialisations (mean), difficulty slope."""

    name: str
    count: int
    general: float
    skills: dict[str, float]
    slope: float = 1.0


ARCHETYPES = (
    Archetype("frontier", 3, 2.0, {"reasoning": 0.4, "knowledge": 0.4}),
    Archetype("generalist", 5, 0.8, {}),
    Archetype("coder", 3, 0.2, {"code": 1.8, "reasoning": 0.4}),
    Archetype("math", 3, 0.2, {"math": 1.8, "reasoning": 0.5}),
    Archetype("polyglot", 2, 0.3, {"language": 1.8}),
    Archetype("knowledge", 2, 0.4, {"knowledge": 1.8}),
    Archetype("small", 6, -0.6, {}, slope=1.8),
)


def make_llms(rng: Rng) -> pl.DataFrame:
    """One row per LLM: name, archetype, general ability, skills, difficulty slope, price, verbosity."""
    rows = []
    for arch in ARCHETYPES:
        for i in range(arch.count):
            g = arch.general + rng.normal(0, 0.35)
            skills = {s: max(0.0, arch.skills.get(s, 0.0) + rng.normal(0, 0.3)) for s in SKILLS}
            log_price = -1.0 + 0.75 * g + 0.1 * sum(skills.values()) + rng.normal(0, 0.25)
            rows.append(
                {
                    "model": f"syn-{arch.name}-{i + 1}",
                    "archetype": arch.name,
                    "general": g,
                    **skills,
                    "slope": arch.slope + (rng.uniform(-0.2, 0.2) if arch.slope != 1.0 else 0.0),
                    "usd_per_mtok": round(10**log_price, 4),
                    "verbosity": float(np.exp(rng.normal(0.1 * g, 0.25))),
                }
            )
    return pl.DataFrame(rows)


def abilities(llms: pl.DataFrame, rng: Rng) -> np.ndarray:
    """theta (LLMs x families): general ability + loadings . specialisations + a little noise."""
    skills = llms.select(SKILLS).to_numpy()
    loadings = np.array([[f.loadings.get(s, 0.0) for s in SKILLS] for f in FAMILIES])
    general = llms["general"].to_numpy()[:, None]
    return general + skills @ loadings.T + rng.normal(0, 0.25, (llms.height, len(FAMILIES)))


# ---- prompts and outcomes ------------------------------------------------------------------------------------
def make_prompts(rng: Rng, n: int) -> pl.DataFrame:
    """``n`` distinct prompts over the families (sizes drawn), each with its visible and IRT difficulty."""
    sizes = rng.multinomial(n, rng.dirichlet(np.full(len(FAMILIES), 12.0)))
    rows, seen = [], set()
    for f_index, (family, size) in enumerate(zip(FAMILIES, sizes, strict=True)):
        i, tries = 0, 0
        while i < size:
            tries += 1
            if tries > 50 * size + 100:
                raise ValueError(f"--prompts {n}: family {family.name!r} has too few distinct prompts for that many")
            d = float(rng.uniform())
            text, reference = family.make(rng, d)
            if text in seen:
                continue
            seen.add(text)
            b = family.offset + 2.5 * (d - 0.5) + rng.normal(0, 0.6)
            rows.append((f"{family.name}-{i:05d}", text, family.name, reference, round(d, 4), b, f_index))
            i += 1
    names = ("prompt_id", "prompt", "category", "reference", "difficulty", "irt_b", "family_index")
    return pl.DataFrame(rows, schema=names, orient="row")


def make_results(rng: Rng, prompts: pl.DataFrame, llms: pl.DataFrame, theta: np.ndarray) -> pl.DataFrame:
    """One row per (LLM, prompt): a 2PL IRT correctness draw and the answer's token counts."""
    f = prompts["family_index"].to_numpy()
    b, d = prompts["irt_b"].to_numpy(), prompts["difficulty"].to_numpy()
    a = np.array([fam.discrimination for fam in FAMILIES])[f]
    slope = llms["slope"].to_numpy()[:, None]
    p_correct = 1 / (1 + np.exp(-a * (theta[:, f] - slope * b)))
    score = (rng.uniform(size=p_correct.shape) < p_correct).astype(float)
    base = np.array([fam.output_tokens for fam in FAMILIES])[f]
    verbosity = llms["verbosity"].to_numpy()[:, None]
    out_tokens = np.maximum(1, np.round(base * verbosity * (1 + d) * rng.lognormal(0, 0.35, p_correct.shape)))
    in_tokens = np.ceil(prompts["prompt"].str.len_chars().to_numpy() / 4)
    n_llms, n_prompts = p_correct.shape
    return pl.DataFrame(
        {
            "model": np.repeat(llms["model"].to_numpy(), n_prompts),
            "prompt_id": np.tile(prompts["prompt_id"].to_numpy(), n_llms),
            "score": score.ravel(),
            "input_tokens": np.tile(in_tokens, n_llms).astype(np.int64),
            "output_tokens": out_tokens.ravel().astype(np.int64),
        }
    )


SPEC = """\
# A synthetic dataset (benchmarks/synthetic_dataset.py): results only, never sent to an endpoint.
template: "{prompt}"
router_text: prompt
collectable: false
"""


def generate(out_dir: str | Path, seed: int = 0, n_prompts: int = DEFAULT_PROMPTS) -> Path:
    """Write the dataset (see the module docstring) under ``out_dir``; the same seed writes the same files."""
    if n_prompts < MIN_PROMPTS:
        raise ValueError(f"--prompts {n_prompts}: must be at least {MIN_PROMPTS}")
    rng = np.random.default_rng(seed)
    llms = make_llms(rng)
    theta = abilities(llms, rng)
    prompts = make_prompts(rng, n_prompts)
    results = make_results(rng, prompts, llms, theta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts.select("prompt_id", "prompt", "category", "reference", "difficulty").write_ndjson(out / "prompts.jsonl")
    results.write_parquet(out / "results.parquet")
    llms.select("model", "usd_per_mtok", "archetype").write_csv(out / "models.csv")
    (out / "spec.yaml").write_text(SPEC)
    truth = pl.DataFrame(
        {
            "model": np.repeat(llms["model"].to_numpy(), len(FAMILIES)),
            "family": [f.name for f in FAMILIES] * llms.height,
            "ability": theta.ravel().round(4),
        }
    )
    truth.write_csv(out / "abilities.csv")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=DEFAULT_PROMPTS, help="number of prompts")
    args = parser.parse_args(argv)
    try:
        out = generate(args.out_dir, args.seed, args.prompts)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_llms = sum(a.count for a in ARCHETYPES)
    print(f"wrote {args.prompts} prompts x {n_llms} LLMs ({len(FAMILIES)} families, seed {args.seed}) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
