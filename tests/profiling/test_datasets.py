"""Prompt sets of any dataset: the file format, rendering by the dataset's spec, stable splits, bad rows refused."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

import warehouse as wh
from profiling.datasets import PromptSetError, get_adapter, import_dataset, render
from profiling.rendering import render_mmlu_pro


def _write_jsonl(path, rows: list[dict]):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


ROWS = [
    {
        "prompt_id": i,
        "prompt": f"What is {i} + {i}?",
        "reference": str(2 * i),
        "grader": "numeric",
        "category": "math" if i % 2 else "arithmetic",
        "shots": f"{i} examples before. " * 20 + f"Question {i}?",
    }
    for i in range(40)
]


@pytest.fixture
def con(tmp_path):
    with wh.connect(tmp_path / "w.duckdb") as con:
        yield con


def test_the_mmlu_pro_adapter_renders_mmlu_pros_own_prompt(mmlu_like_dir):
    rows, spec = get_adapter("mmlu_pro").load(mmlu_like_dir)
    questions = pl.read_parquet(mmlu_like_dir / "questions.parquet")
    for row, question in zip(rows.iter_rows(named=True), questions.iter_rows(named=True), strict=True):
        messages, user, text = render(spec, row)
        assert user == render_mmlu_pro(question["question"], question["options"], question["category"])
        assert messages == [{"role": "user", "content": user}]
        assert text.startswith(question["question"].strip()) and "(A) 1" in text  # what the router sees


def test_a_prompt_file_is_rendered_by_its_spec_and_recorded_with_its_request(con, tmp_path):
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            *ROWS[:3],
            {
                "prompt_id": "chat",
                "messages": [{"role": "user", "content": "Hi?"}],
                "reference": "hi",
                "grader": "exact_match",
            },
        ],
    )
    spec = {
        "system_prompt": "Answer with a number.",
        "template": "Q: {prompt} [{category}]\nA:",
        "few_shot": [{"prompt": "Q: 1 + 1?", "answer": "2"}],
        "max_tokens": 16,
        "stop": ["\n"],
        "router_text": "last:12",
    }
    prompts = import_dataset(con, path, "arith", spec=spec).sort("prompt_id")
    row = prompts.filter(pl.col("prompt_id") == "arith/1").row(0, named=True)
    assert json.loads(row["messages"]) == [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "Q: 1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Q: What is 1 + 1? [math]\nA:"},
    ]
    assert row["prompt"] == "Q: What is 1 + 1? [math]\nA:" and row["text"] == "What is 1 + 1?"[-12:]
    assert json.loads(row["request_params"]) == {"max_tokens": 16, "stop": ["\n"], "temperature": 0.0}
    chat = prompts.filter(pl.col("prompt_id") == "arith/chat").row(0, named=True)
    assert json.loads(chat["messages"])[0]["role"] == "system" and chat["prompt"] == "Hi?"  # chat rows kept as sent
    assert json.loads(row["metadata"])["shots"].endswith("Question 1?")
    # a new template changes the request: earlier answers become stale, the dataset records its version
    before = wh.read_datasets(con)["template_version"].item()
    again = import_dataset(con, path, "arith", spec={**spec, "template": "{prompt}"})
    assert wh.read_datasets(con)["template_version"].item() != before
    assert set(again["request_hash"]) & set(prompts["request_hash"]) == {chat["request_hash"]}


@pytest.mark.parametrize(
    ("router_text", "expected"),
    [("prompt", "What is 3 + 3?"), ("field:shots", ROWS[3]["shots"]), ("last:12", ROWS[3]["shots"][-12:])],
)
def test_what_the_router_embeds_is_configurable(con, tmp_path, router_text, expected):
    rows = [{**ROWS[3], "prompt": ROWS[3]["shots"] if router_text == "last:12" else ROWS[3]["prompt"]}]
    prompts = import_dataset(con, _write_jsonl(tmp_path / "p.jsonl", rows), "d", router_text=router_text)
    assert prompts["text"].item() == expected


def test_splits_are_kept_assigned_stratified_and_never_move(con, tmp_path):
    rows = [{**r, "split": "test" if r["prompt_id"] < 4 else None} for r in ROWS]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    sample = import_dataset(con, path, "d", sample=20)
    full = import_dataset(con, path, "d").sort("prompt_id")
    assert full.filter(pl.col("prompt_id").is_in([f"d/{i}" for i in range(4)]))["split"].to_list() == ["test"] * 4
    kept = dict(zip(sample["prompt_id"], sample["split"], strict=True))
    assert {p: s for p, s in full.select("prompt_id", "split").iter_rows() if p in kept} == kept
    by_category = full.filter(pl.col("split") == "train").group_by("category").len()
    assert by_category["len"].min() >= 10  # about 60% of each category's 20
    stored = dict(full.select("prompt_id", "split").iter_rows())
    moved = next(p for p, s in stored.items() if s == "train").split("/")[1]
    bad = [{**r, "split": "test"} if str(r["prompt_id"]) == moved else r for r in rows]
    with pytest.raises(PromptSetError, match=rf"prompt_id='{moved}': split='test': it is stored as 'train'"):
        import_dataset(con, _write_jsonl(tmp_path / "bad.jsonl", bad), "d")
    # a CSV of the same prompts in another order draws the same splits
    shuffled = pl.DataFrame(rows[::-1]).drop("split")
    shuffled.write_csv(tmp_path / "p.csv")
    with wh.connect(tmp_path / "other.duckdb") as other, wh.connect(tmp_path / "third.duckdb") as third:
        a = import_dataset(other, tmp_path / "p.csv", "d").sort("prompt_id")
        b = import_dataset(third, _write_jsonl(tmp_path / "q.jsonl", [{**r, "split": None} for r in rows]), "d")
        assert a["split"].to_list() == b.sort("prompt_id")["split"].to_list()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "x", "grader": "exact_match", "reference": "a"}], "missing column 'prompt_id'"),
        (
            [
                {"prompt_id": 1, "prompt": "a?", "reference": "a", "grader": "exact_match"},
                {"prompt_id": 1, "prompt": "b?", "reference": "a", "grader": "exact_match"},
            ],
            r"prompt_id='1': appears 2 times with different contents",
        ),
        ([{"prompt_id": 1, "prompt": "a?", "reference": "a", "grader": "telepathy"}], "telepathy"),
        (
            [{"prompt_id": 1, "prompt": "a?", "reference": "a", "grader": "exact_match", "split": "dev"}],
            r"prompt_id='1': split='dev'",
        ),
        ([{"prompt_id": 1, "prompt": "a?", "reference": "seven", "grader": "numeric"}], "seven"),
        ([{"prompt_id": 1, "prompt": " ", "reference": "a", "grader": "exact_match"}], r"prompt_id='1': prompt=' '"),
        ([{"prompt_id": 1, "messages": "[{", "reference": "a", "grader": "exact_match"}], "not valid JSON"),
        (
            [
                {
                    "prompt_id": 1,
                    "messages": [{"role": "system", "content": "x"}],
                    "reference": "a",
                    "grader": "exact_match",
                }
            ],
            "no message with role 'user'",
        ),
        ([{"prompt_id": 1, "prompt": "a?", "reference": "a"}], "grader is missing"),
    ],
)
def test_bad_rows_are_named_and_nothing_is_written(con, tmp_path, rows, message):
    import_dataset(con, _write_jsonl(tmp_path / "good.jsonl", ROWS[:2]), "d")
    before = (wh.read_prompts(con), wh.read_datasets(con).drop("updated_at"))
    with pytest.raises(PromptSetError, match=message):
        import_dataset(con, _write_jsonl(tmp_path / "bad.jsonl", rows), "d")
    assert wh.read_prompts(con).equals(before[0]) and wh.read_datasets(con).drop("updated_at").equals(before[1])


def test_a_template_field_missing_from_a_row_is_named(con, tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "shots"}])
    with pytest.raises(PromptSetError, match=r"prompt_id='1': template field 'shots'"):
        import_dataset(con, path, "d", template="{shots}")
    assert wh.read_prompts(con).height == 0


def test_unknown_adapter_names_the_known_ones(con, tmp_path):
    with pytest.raises(PromptSetError, match=r"adapter='helm': unknown; known adapters: mmlu_pro, prompts"):
        import_dataset(con, tmp_path, "d", adapter="helm")


def test_one_split_taking_every_share_gives_it_to_every_row():
    from profiling.datasets import _assign_splits

    rows = pl.DataFrame({"prompt_id": ["a", "b", "c"], "category": ["x", "y", "x"]})
    assert _assign_splits(rows, {"validation": 1.0}, seed=0).to_list() == ["validation"] * 3  # not one value


@pytest.mark.parametrize(("per_category", "categories"), [(4, 5), (1, 20), (40, 3), (7, 9)])
def test_small_categories_still_give_each_split_its_share_of_the_whole(per_category, categories):
    """Cut alone, a category of 4 prompts gives validation (10%) none: five of them made a dataset without
    validation prompts, so no LLM could be profiled. Interleaved, each split gets its share of the whole, and of
    each category give or take one prompt."""
    from profiling.datasets import DEFAULT_SHARES, _assign_splits

    n = per_category * categories
    ids, names = [f"p{i}" for i in range(n)], [f"c{i % categories}" for i in range(n)]
    rows = pl.DataFrame({"prompt_id": ids, "category": names})
    split = _assign_splits(rows, DEFAULT_SHARES, seed=0)
    counts = split.value_counts().rows()
    assert dict(counts) == {name: c for name, c in _whole_counts(n).items() if c}
    per_category_counts = rows.with_columns(split).group_by("category", "split").len()
    for name, share in DEFAULT_SHARES.items():
        got = per_category_counts.filter(pl.col("split") == name)["len"]
        assert got.sum() == _whole_counts(n)[name]
        assert all(abs(c - share * per_category) <= 1 for c in got), (name, got.to_list())


def _whole_counts(n: int) -> dict[str, int]:
    """The prompts of ``n`` each split of DEFAULT_SHARES takes (each edge is a cumulative share, rounded up)."""
    train, validation = math.ceil(0.6 * n - 1e-9), math.ceil(0.7 * n - 1e-9)
    return {"train": train, "validation": validation - train, "test": n - validation}
