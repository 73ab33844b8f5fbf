"""The grader-agreement benchmark on a tiny dataset in the MMLU-Pro layout whose agreement is known."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from benchmarks import grader_agreement
from profiling.graders import GradeItem

ANSWERS = {1: "A", 2: "B", 3: "C", 4: "D"}
# model, question_id, response, the dataset's pred, the dataset's correct
ROWS = [
    ("alpha", 1, "The answer is (A).", "A", 1),
    ("alpha", 2, "The answer is (C).", "C", 0),
    ("alpha", 3, "So\nAnswer: C", None, 0),  # the grader finds C (right); the dataset's l1-only pred did not
    ("alpha", 4, "no clue at all", "G", 0),  # nothing to extract; the dataset guessed G (wrong either way)
    ("beta", 1, "the answer is A", "A", 1),
    ("beta", 2, "the answer is (B)", "B", 1),
    ("beta", 3, "the answer is (C)", "C", 1),
    ("beta", 4, "the answer is (A)", "A", 0),
]


@pytest.fixture(autouse=True)
def no_synthetic_cases(request, monkeypatch):
    """The synthetic cases (a code case waits for its time limit) run in their own test only."""
    if "synthetic" not in request.node.name:
        monkeypatch.setattr(grader_agreement, "synthetic_cases", lambda: [])


def write_dataset(root: Path, rows: list[tuple] = ROWS, answers: dict[int, str] = ANSWERS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "question_id": list(answers),
            "question": [f"Question {q}?" for q in answers],
            "options": [["w", "x", "y", "z"]] * len(answers),
            "answer": list(answers.values()),
            "category": "math",
            "src": "test",
        }
    ).write_parquet(root / "questions.parquet")
    pl.DataFrame(
        rows,
        schema={
            "model": pl.String,
            "question_id": pl.Int64,
            "response": pl.String,
            "pred": pl.String,
            "correct": pl.Int64,
        },
        orient="row",
    ).write_parquet(root / "responses.parquet")
    return root


def line_starting(printed: str, prefix: str) -> str:
    lines = [line for line in printed.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, printed)
    return lines[0]


def test_prints_agreement_per_rule_and_model_and_the_disagreeing_row(tmp_path, capsys):
    data = write_dataset(tmp_path / "mmlu")
    assert grader_agreement.main(["--data", str(data)]) == 0  # under the floor, but not --strict
    printed = capsys.readouterr().out
    assert line_starting(printed, "rows").split()[-1] == "8"
    assert "87.500%" in line_starting(printed, "score == correct")  # 7 of 8
    assert "[FAIL]" in line_starting(printed, "score == correct")
    assert "75.000%" in line_starting(printed, "letter == pred (all rows")  # alpha 3 and 4 differ
    assert "85.714%" in line_starting(printed, "letter == pred (the 7 rows with a pred)")  # 6 of 7
    assert line_starting(printed, "Answer:").split()[1:3] == ["1", "0.000%"]  # one row, and it disagrees
    per_model = printed.split("per model, worst first")[1].split("disagreements with correct")[0]
    assert per_model.index("alpha") < per_model.index("beta")  # worst first
    assert line_starting(per_model, "alpha").split()[1:4] == ["4", "75.000%", "50.000%"]
    examples = printed.split("disagreements with correct: 1 rows; examples")[1].split("\nper grader")[0]
    examples = examples.strip().splitlines()[1:]
    assert len(examples) == 2  # header + the one disagreeing row
    assert examples[1].split()[:6] == ["alpha", "3", "C", "-", "0", "C"]
    assert examples[1].endswith("...So\\nAnswer: C")
    assert "rows/s" in printed and "machine:" in printed


def test_strict_exits_1_under_the_floor_and_0_above(tmp_path, capsys):
    data = write_dataset(tmp_path / "under")
    assert grader_agreement.main(["--data", str(data), "--strict"]) == 1
    agreeing = [row if row[:2] != ("alpha", 3) else (*row[:4], 1) for row in ROWS]
    data = write_dataset(tmp_path / "above", agreeing)
    assert grader_agreement.main(["--data", str(data), "--strict"]) == 0
    printed = capsys.readouterr().out
    assert "100.000%  [PASS]" in printed.split("grader:")[-1]
    assert "disagreements with correct: 0 rows" in printed


def test_grade_adds_score_letter_and_rule(tmp_path):
    graded, rows_per_s = grader_agreement.grade(grader_agreement.load_rows(write_dataset(tmp_path / "d")))
    alpha = graded.filter(pl.col("model") == "alpha").sort("question_id")
    assert alpha["score"].to_list() == [1.0, 0.0, 1.0, 0.0]
    assert alpha["letter"].to_list() == ["A", "C", "C", None]
    assert alpha["rule"].to_list() == ["answer is", "answer is", "Answer:", "none"]
    assert rows_per_s > 0


def test_reads_the_directory_from_the_environment(tmp_path, monkeypatch, capsys):
    data = write_dataset(tmp_path / "from_env")
    monkeypatch.setenv(grader_agreement.DATA_ENV, str(data))
    assert grader_agreement.main([]) == 0
    assert f"data: {data}" in capsys.readouterr().out


def test_missing_dataset_exits_2_naming_the_path_and_the_variable(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert grader_agreement.main(["--data", str(missing), "--strict"]) == 2
    err = capsys.readouterr().err
    assert str(missing / "questions.parquet") in err and "UNIROUTE_MMLU_PRO_DIR" in err


def test_a_response_without_its_question_exits_2(tmp_path, capsys):
    data = write_dataset(tmp_path / "orphan", [*ROWS, ("beta", 99, "the answer is (A)", "A", 0)])
    assert grader_agreement.main(["--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "1 rows have no answer in questions.parquet" in err and "question_id 99" in err


@pytest.mark.parametrize("n", [0, 1])
def test_examples_flag_limits_the_rows_shown(tmp_path, capsys, n):
    grader_agreement.main(["--data", str(write_dataset(tmp_path / "d")), "--examples", str(n)])
    tail = capsys.readouterr().out.split("disagreements with correct: 1 rows")[1].split("\nper grader")[0]
    assert tail.count("alpha") == n


def test_the_per_grader_table_has_a_row_per_grader_and_strict_needs_them_all(tmp_path, capsys, monkeypatch):
    agreeing = [row if row[:2] != ("alpha", 3) else (*row[:4], 1) for row in ROWS]
    data = write_dataset(tmp_path / "above", agreeing)
    assert grader_agreement.main(["--data", str(data), "--strict"]) == 0
    table = capsys.readouterr().out.split("\nper grader\n")[1].splitlines()
    assert [line.split()[0] for line in table] == ["grader", "mmlu_pro_letter", "multiple_choice"]
    assert line_starting("\n".join(table), "multiple_choice").split()[3:5] == ["8", "100.000%"]
    failing = grader_agreement.Case("exact_match", {}, "mislabelled", [GradeItem("a", "a")], [0.0])
    monkeypatch.setattr(grader_agreement, "synthetic_cases", lambda: [failing])
    assert grader_agreement.main(["--data", str(data), "--strict"]) == 1
    assert "0.000%" in line_starting(capsys.readouterr().out, "exact_match")


def test_the_synthetic_cases_agree_with_their_labels():
    cases = grader_agreement.synthetic_cases()
    assert {case.grader for case in cases} == {"numeric", "exact_match", "regex", "code"}
    for case in cases:
        assert 0 < sum(case.labels) < len(case.labels), case.grader  # both outcomes are represented
        measured = grader_agreement.measure(case)
        assert measured["agreement"] == 1.0 and measured["passed"], case.grader
