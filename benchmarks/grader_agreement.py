"""Do the graders give the grades they should? Every row of MMLU-Pro's responses, and cases with known labels.

Grades each MMLU-Pro response against its question's answer with ``mmlu_pro_letter``, then compares with the
dataset's ``correct`` column (the floor: >= 99% agreement) and the extracted letter with its ``pred`` column,
per extraction rule and per model. Then one row per grader, ``grader, cases, agreement, rows/s``: the
``multiple_choice`` grader (10 letters, default extraction) on the same MMLU-Pro rows, and ``numeric``,
``exact_match``, ``regex`` and ``code`` on cases this script builds with known labels (floor: 100%). The
``llm_judge`` grader has no case here: its agreement depends on the judge LLM, not on this code.

    python -m benchmarks.grader_agreement            # ../shared/data/mmlu_pro, or $UNIROUTE_MMLU_PRO_DIR
    python -m benchmarks.grader_agreement --strict   # exit 1 when agreement is under the floor
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DEFAULT_DATA_DIR
from profiling.graders import CHOICE_RULES, GradeItem, get_grader, trace_choice

GRADER = "mmlu_pro_letter"
#: Share of rows whose grade must equal the dataset's ``correct``.
AGREEMENT_FLOOR = 0.99
DATA_ENV = "UNIROUTE_MMLU_PRO_DIR"
TAIL_CHARS = 90


def data_dir(arg: str | None) -> Path:
    """``--data``, else ``$UNIROUTE_MMLU_PRO_DIR``, else ``../shared/data/mmlu_pro``."""
    return Path(arg or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def load_rows(directory: Path) -> pl.DataFrame:
    """Every response with its question's answer: model, question_id, response, pred, correct, answer."""
    missing = [
        directory / name for name in ("questions.parquet", "responses.parquet") if not (directory / name).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"MMLU-Pro data not found: {', '.join(map(str, missing))} missing; set {DATA_ENV} or pass --data DIR"
        )
    answers = pl.read_parquet(directory / "questions.parquet", columns=["question_id", "answer"])
    responses = pl.read_parquet(
        directory / "responses.parquet", columns=["model", "question_id", "response", "pred", "correct"]
    )
    rows = responses.join(answers, on="question_id", how="left")
    orphans = rows.filter(pl.col("answer").is_null())
    if orphans.height:
        raise ValueError(
            f"responses.parquet: {orphans.height} rows have no answer in questions.parquet "
            f"(first question_id {orphans['question_id'][0]})"
        )
    return rows


def grade(rows: pl.DataFrame) -> tuple[pl.DataFrame, float]:
    """Adds ``score`` (the grader's), ``letter`` and ``rule`` (which extraction step); returns rows/s of grading."""
    grader = get_grader(GRADER)
    responses, answers = rows["response"].to_list(), rows["answer"].to_list()
    start = time.perf_counter()
    scores = grader.grade_many(responses, answers)
    seconds = time.perf_counter() - start
    letters, rules = zip(*map(trace_choice, responses), strict=True) if responses else ((), ())
    graded = rows.with_columns(
        score=pl.Series(scores, dtype=pl.Float64),
        letter=pl.Series(letters, dtype=pl.String),
        rule=pl.Series(rules, dtype=pl.String),
    ).with_columns(
        agree_correct=pl.col("score") == pl.col("correct").cast(pl.Float64),
        agree_pred=pl.col("letter").eq_missing(pl.col("pred")),
    )
    return graded, len(responses) / seconds if seconds > 0 else float("inf")


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.3f}%"


def print_summary(graded: pl.DataFrame, directory: Path, rows_per_s: float) -> bool:
    """The headline numbers; returns whether the floor holds."""
    n = graded.height
    agreement = graded["agree_correct"].mean() if n else 0.0
    with_pred = graded.filter(pl.col("pred").is_not_null())
    passed = agreement >= AGREEMENT_FLOOR
    print(f"grader: {GRADER} v{get_grader(GRADER).version}    data: {directory}")
    print(f"machine: {machine_description()}")
    print(f"\n{'measure':<44}{'value':>14}")
    print(f"{'rows':<44}{n:>14,}")
    print(f"{'models / questions':<44}{graded['model'].n_unique():>7} / {graded['question_id'].n_unique():<6,}")
    print(
        f"{'score == correct':<44}{_pct(agreement):>14}  [{'PASS' if passed else 'FAIL'}] floor {AGREEMENT_FLOOR:.0%}"
    )
    print(f"{'letter == pred (all rows; None == null)':<44}{_pct(graded['agree_pred'].mean() if n else None):>14}")
    print(
        f"{'letter == pred (the ' + format(with_pred.height, ',') + ' rows with a pred)':<44}"
        f"{_pct(with_pred['agree_pred'].mean() if with_pred.height else None):>14}"
    )
    print(f"{'grading speed (grade_many)':<44}{rows_per_s:>10,.0f} rows/s")
    return passed


def print_by_rule(graded: pl.DataFrame) -> None:
    """Which step of MMLU-Pro's chain gave the letter, and how each agrees with the dataset."""
    table = (
        graded.group_by("rule")
        .agg(
            rows=pl.len(),
            agree_correct=pl.col("agree_correct").mean(),
            agree_pred=pl.col("agree_pred").mean(),
            pred_null=pl.col("pred").is_null().mean(),
        )
        .with_columns(order=pl.col("rule").replace_strict(CHOICE_RULES, list(range(len(CHOICE_RULES)))))
        .sort("order")
    )
    print(f"\nby extraction rule\n{'rule':<14}{'rows':>10}{'== correct':>13}{'== pred':>12}{'pred null':>12}")
    for r in table.iter_rows(named=True):
        print(
            f"{r['rule']:<14}{r['rows']:>10,}{_pct(r['agree_correct']):>13}{_pct(r['agree_pred']):>12}"
            f"{_pct(r['pred_null']):>12}"
        )


def print_by_model(graded: pl.DataFrame) -> None:
    """Per-model agreement, worst first."""
    table = (
        graded.group_by("model")
        .agg(
            rows=pl.len(),
            agree_correct=pl.col("agree_correct").mean(),
            agree_pred=pl.col("agree_pred").mean(),
            fallback=(pl.col("rule") != CHOICE_RULES[0]).mean(),
        )
        .sort("agree_correct", "model")
    )
    print(f"\nper model, worst first\n{'model':<30}{'rows':>8}{'== correct':>13}{'== pred':>12}{'fallback':>11}")
    for r in table.iter_rows(named=True):
        print(
            f"{r['model']:<30}{r['rows']:>8,}{_pct(r['agree_correct']):>13}{_pct(r['agree_pred']):>12}"
            f"{_pct(r['fallback']):>11}"
        )


def disagreement_examples(graded: pl.DataFrame, n: int) -> pl.DataFrame:
    """Up to ``n`` rows whose score differs from ``correct``, taken in turn from each rule, then model order."""
    disagreeing = graded.filter(~pl.col("agree_correct")).sort("model", "question_id")
    turns = disagreeing.with_columns(turn=pl.int_range(pl.len()).over("rule"))
    return turns.sort("turn", "rule", "model", "question_id").head(n).drop("turn")


def print_examples(graded: pl.DataFrame, n: int) -> None:
    n_disagreeing = int((~graded["agree_correct"]).sum())
    print(f"\ndisagreements with correct: {n_disagreeing:,} rows; examples (response tail, newlines as \\n):")
    if not n_disagreeing or n <= 0:
        return
    print(f"{'model':<28}{'question_id':>12} {'answer':>6}{'pred':>5}{'correct':>8}{'ours':>5}  {'rule':<12} tail")
    for r in disagreement_examples(graded, n).iter_rows(named=True):
        tail = r["response"][-TAIL_CHARS:].replace("\n", "\\n")
        print(
            f"{r['model']:<28}{r['question_id']:>12} {r['answer']:>6}{r['pred'] or '-':>5}{r['correct']:>8}"
            f"{r['letter'] or '-':>5}  {r['rule']:<12} ...{tail}"
        )


# ---- one case per grader ----


@dataclass(frozen=True)
class Case:
    """Items for one grader with the score each should get."""

    grader: str
    options: dict[str, Any]
    data: str
    items: list[GradeItem]
    labels: list[float]
    floor: float = 1.0


def _numeric_items(rng: random.Random, n: int) -> tuple[list[GradeItem], list[float]]:
    """Numbers written as the numeric grader reads them; wrong answers end on another number."""
    formats = [
        (lambda v: f"{v:,.2f}", lambda v: f"{v}"),
        (lambda v: f"${v:,.2f}", lambda v: f"{v:.2f}"),
        (lambda v: f"{v:.6e}", lambda v: f"{v:.6f}"),
        (lambda v: f"{v}", lambda v: f"${v:,.2f}"),
    ]
    items, labels = [], []
    for i in range(n):
        value = round(rng.uniform(-5000, 5000), 2)
        written, reference = formats[i % len(formats)]
        right = i % 2 == 0
        shown = value if right else round(value + rng.choice([-1, 1]) * rng.uniform(0.5, 50), 2)
        template = rng.choice(["The answer is {}.", "So x = {}", "Step 1: 12 apples. Total: {}", "{}"])
        items.append(GradeItem(template.format(written(shown)), reference(value)))
        labels.append(1.0 if right else 0.0)
    fractions = [("So 3/4 of it", "0.75", 1.0), ("It is 1/3", "0.3333333", 1.0), ("3/4", "0.7", 0.0)]
    items += [GradeItem(r, a) for r, a, _ in fractions]
    return items, labels + [label for *_, label in fractions]


_WORDS = ["Paris", "New York", "straße", "C++", "the Eiffel Tower", "H2O", "Ada Lovelace", "42 km"]


def _exact_items(rng: random.Random, n: int) -> tuple[list[GradeItem], list[float]]:
    """Same answer up to case, whitespace and trailing punctuation (1), or another answer (0)."""
    items, labels = [], []
    for i in range(n):
        word = rng.choice(_WORDS)
        if i % 2 == 0:
            shown = rng.choice([word.upper(), word.lower(), f"  {word}. ", word.replace(" ", "  "), f"{word}!?"])
            labels.append(1.0)
        else:
            other = rng.choice([w for w in _WORDS if w.casefold() != word.casefold()])
            shown = rng.choice([other, f"{word} and {other}", f"not {word}", f"{word},x"])
            labels.append(0.0)
        items.append(GradeItem(shown, word))
    return items, labels


def _regex_items(rng: random.Random, n: int) -> tuple[list[GradeItem], list[float]]:
    """Does the answer name the year 1969 (pattern ``\b1969\b``), anywhere in the text?"""
    right = ["It happened in 1969.", "1969", "July 20, 1969, at 20:17 UTC", "Year: 1969\nwhy: Apollo"]
    wrong = ["In 1968.", "19690", "around 1970", "x1969", "nineteen sixty-nine"]
    items = [GradeItem(rng.choice(right if i % 2 == 0 else wrong)) for i in range(n)]
    return items, [1.0 if i % 2 == 0 else 0.0 for i in range(n)]


# MBPP-style tasks: (tests, a correct solution, an incorrect one).
_CODE_TASKS = [
    (
        "assert reverse_words('a b c') == 'c b a'\nassert reverse_words('ab cd') == 'cd ab'",
        "def reverse_words(s):\n    return ' '.join(reversed(s.split()))",
        "def reverse_words(s):\n    return s[::-1]",  # right on 'a b c', wrong on words longer than a letter
    ),
    (
        "assert is_prime(2)\nassert is_prime(13)\nassert not is_prime(1)\nassert not is_prime(21)",
        "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))",
        "def is_prime(n):\n    return n % 2 == 1",
    ),
    (
        "assert max_sub([1, -2, 3, 4, -1]) == 7\nassert max_sub([-3, -1]) == -1",
        "def max_sub(xs):\n    best = cur = xs[0]\n    for x in xs[1:]:\n        cur = max(x, cur + x)\n"
        "        best = max(best, cur)\n    return best",
        "def max_sub(xs):\n    return sum(x for x in xs if x > 0)",
    ),
    (
        "assert fib(0) == 0\nassert fib(10) == 55",
        "```python\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n```",
        "def fib(n):\n    while True:\n        pass",  # never returns: killed at the time limit
    ),
    (
        "assert count_vowels('Hello World') == 3",
        "Here you go:\n```python\ndef count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)\n```",
        "```python\ndef count_vowels(s):\n    return sum(c in 'aeiou' for c in s.upper())\n```",
    ),
    (
        "assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]",
        "def dedupe(xs):\n    return list(dict.fromkeys(xs))",
        "def dedupe(xs):\n    return sorted(set(xs))",
    ),
]


def synthetic_cases(seed: int = 0, n: int = 400) -> list[Case]:
    """The cases with known labels this script makes itself."""
    rng = random.Random(seed)
    code_items = [GradeItem(solution, tests=tests) for tests, *solutions in _CODE_TASKS for solution in solutions]
    return [
        Case("numeric", {}, "synthetic numbers", *_numeric_items(rng, n)),
        Case("exact_match", {}, "synthetic short answers", *_exact_items(rng, n)),
        Case("regex", {"pattern": r"\b1969\b"}, "synthetic years", *_regex_items(rng, n)),
        Case("code", {"timeout_s": 2}, "MBPP-style tasks", code_items, [1.0, 0.0] * len(_CODE_TASKS)),
    ]


def mmlu_pro_choice_case(rows: pl.DataFrame) -> Case:
    """``multiple_choice`` over A-J with its default extraction, against the dataset's ``correct``."""
    items = [GradeItem(r, a) for r, a in zip(rows["response"], rows["answer"], strict=True)]
    labels = rows["correct"].cast(pl.Float64).to_list()
    return Case("multiple_choice", {"n_options": 10}, "MMLU-Pro correct", items, labels, AGREEMENT_FLOOR)


def measure(case: Case) -> dict[str, Any]:
    """grader, version, data, cases, agreement (share of items whose score is the label), rows/s."""
    grader = get_grader(case.grader, case.options)
    start = time.perf_counter()
    results = grader.grade_items(case.items)
    seconds = time.perf_counter() - start
    agree = sum(r.score == label for r, label in zip(results, case.labels, strict=True))
    n = len(case.items)
    return {
        "grader": case.grader,
        "version": grader.version,
        "data": case.data,
        "cases": n,
        "agreement": agree / n if n else 0.0,
        "rows_per_s": n / seconds if seconds > 0 else float("inf"),
        "passed": n > 0 and agree / n >= case.floor,
        "floor": case.floor,
    }


def print_agreement(measured: list[dict[str, Any]]) -> bool:
    """The per-grader table; returns whether every case holds its floor."""
    print(f"\nper grader\n{'grader':<18}{'data':<26}{'cases':>9}{'agreement':>12}{'rows/s':>12}  floor")
    for m in measured:
        verdict = "PASS" if m["passed"] else "FAIL"
        print(
            f"{m['grader']:<18}{m['data']:<26}{m['cases']:>9,}{_pct(m['agreement']):>12}{m['rows_per_s']:>12,.0f}"
            f"  {m['floor']:.0%} [{verdict}]"
        )
    return all(m["passed"] for m in measured)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help=f"MMLU-Pro directory (default ${DATA_ENV} or {DEFAULT_DATA_DIR})")
    parser.add_argument("--examples", type=int, default=8, help="disagreeing rows to show")
    parser.add_argument("--strict", action="store_true", help=f"exit 1 when agreement is under {AGREEMENT_FLOOR:.0%}")
    args = parser.parse_args(argv)

    directory = data_dir(args.data)
    try:
        rows = load_rows(directory)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    graded, rows_per_s = grade(rows)
    passed = print_summary(graded, directory, rows_per_s)
    print_by_rule(graded)
    print_by_model(graded)
    print_examples(graded, args.examples)
    letter = {
        "grader": GRADER,
        "data": "MMLU-Pro correct",
        "cases": graded.height,
        "agreement": graded["agree_correct"].mean() if graded.height else 0.0,
        "rows_per_s": rows_per_s,
        "passed": passed,
        "floor": AGREEMENT_FLOOR,
    }
    measured = [letter, measure(mmlu_pro_choice_case(rows)), *(measure(case) for case in synthetic_cases())]
    all_passed = print_agreement(measured)
    return 0 if all_passed or not args.strict else 1


if __name__ == "__main__":
    raise SystemExit(main())
