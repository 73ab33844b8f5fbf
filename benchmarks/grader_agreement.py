"""Does the ``mmlu_pro_letter`` grader reproduce the dataset's own grades? Every row of MMLU-Pro's responses.

Grades each response against its question's answer, then compares with the dataset's ``correct`` column (the
floor: >= 99% agreement) and the extracted letter with its ``pred`` column, per extraction rule and per model.

    python -m benchmarks.grader_agreement            # ../shared/data/mmlu_pro, or $UNIROUTE_MMLU_PRO_DIR
    python -m benchmarks.grader_agreement --strict   # exit 1 when agreement is under the floor
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import polars as pl

from benchmarks.machine import machine_description
from benchmarks.mmlu_pro_data import DEFAULT_DATA_DIR
from profiling.graders import CHOICE_RULES, get_grader, trace_choice

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
    return 0 if passed or not args.strict else 1


if __name__ == "__main__":
    raise SystemExit(main())
