"""read_results: long, RouterBench-style wide and lm-eval samples files become one normalised long frame."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from profiling.results import RESULT_COLUMNS, RESULT_SCHEMA, ResultsError, read_results


def write(frame: pl.DataFrame, path: Path) -> Path:
    """``frame`` as the file ``path`` names by its suffix."""
    {".csv": frame.write_csv, ".jsonl": frame.write_ndjson, ".parquet": frame.write_parquet}[path.suffix](path)
    return path


def write_lines(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


LONG = pl.DataFrame(
    {
        "model": ["m-b", "m-a", "m-a", "m-b"],
        "question_id": ["007", "007", "010", "010"],
        "prompt": ["2+2?", "2+2?", "capital of France?", "capital of France?"],
        "correct": [False, True, True, True],
        "cost": [0.5, 0.001, 0.002, 0.25],
        "prompt_tokens": [10, 10, 12, 12],
        "completion_tokens": [3, 1, 2, 40],
        "response": ["5", "4", "Paris", "It is Paris."],
        "category": ["math", "math", "geo", "geo"],
        "split": ["Train", "train", "val", "val"],
        "unrelated": [1, 2, 3, 4],
    }
)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_long_file_round_trips_with_aliases_costs_and_tokens(tmp_path, suffix):
    results = read_results(write(LONG, tmp_path / f"scores{suffix}"))
    assert results.schema == pl.Schema(RESULT_SCHEMA)
    assert tuple(results.columns) == RESULT_COLUMNS
    assert results.select("model", "prompt_id").rows() == [
        ("m-a", "007"),
        ("m-a", "010"),
        ("m-b", "007"),
        ("m-b", "010"),
    ]
    assert results["score"].to_list() == [1.0, 1.0, 0.0, 1.0]
    assert results["cost_usd"].to_list() == [0.001, 0.002, 0.5, 0.25]
    assert results["input_tokens"].to_list() == [10, 12, 10, 12]
    assert results["output_tokens"].to_list() == [1, 2, 3, 40]
    assert results["response"].to_list() == ["4", "Paris", "5", "It is Paris."]
    assert results["split"].to_list() == ["train", "validation", "train", "validation"]
    assert results["reference"].null_count() == 4


def test_long_file_without_model_column_takes_model_argument_and_int_ids(tmp_path):
    frame = pl.DataFrame({"id": [2, 1], "score": [1, 0]})
    results = read_results(write(frame, tmp_path / "one_model.parquet"), model="gpt-x")
    assert results.rows() == [("gpt-x", "1", 0.0, *[None] * 8), ("gpt-x", "2", 1.0, *[None] * 8)]
    with pytest.raises(ResultsError, match=r"one_model\.parquet: missing column\(s\) \['model'\] or pass model="):
        read_results(tmp_path / "one_model.parquet")


def test_long_file_with_model_column_refuses_a_model_argument(tmp_path):
    with pytest.raises(ResultsError, match=r"has a 'model' column; model='other'"):
        read_results(write(LONG, tmp_path / "s.csv"), model="other")


def test_score_field_names_another_score_column(tmp_path):
    frame = LONG.with_columns(judge=pl.Series([0.25, 0.5, 0.75, 1.0]))
    results = read_results(write(frame, tmp_path / "s.parquet"), score_field="judge")
    assert results["score"].to_list() == [0.5, 0.75, 0.25, 1.0]


def routerbench(prompts: list) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": ["mmlu.val.1", "gsm8k.3", "mtbench.0"],
            "prompt": prompts,
            "eval_name": ["mmlu", "gsm8k", "mt-bench"],
            "oracle_model_to_route_to": ["gpt-4", "meta/llama-2-70b", "gpt-4"],
            "gpt-4": [1.0, 1.0, 0.9],
            "gpt-4|model_response": ["B", "42", "Sure..."],
            "gpt-4|total_cost": [0.03, 0.05, 0.08],
            "meta/llama-2-70b": [0.0, 1.0, 0.3],
            "meta/llama-2-70b|model_response": ["C", "42", "Hmm"],
            "meta/llama-2-70b|total_cost": [0.001, 0.002, 0.004],
        }
    )


STRINGIFIED = ["['Q: which is B?']", "['Janet has 3 ducks.']", "['Write a poem.', 'Now shorter.']"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_routerbench_wide_file_becomes_long_with_list_like_prompts_joined(tmp_path, suffix):
    results = read_results(write(routerbench(STRINGIFIED), tmp_path / f"routerbench_0shot{suffix}"))
    assert results.height == 6
    assert results.filter(model="meta/llama-2-70b").select("prompt_id", "score", "cost_usd", "response").rows() == [
        ("gsm8k.3", 1.0, 0.002, "42"),
        ("mmlu.val.1", 0.0, 0.001, "C"),
        ("mtbench.0", 0.3, 0.004, "Hmm"),
    ]
    row = results.filter(model="gpt-4", prompt_id="mtbench.0").row(0, named=True)
    assert row["prompt"] == "Write a poem.\nNow shorter."
    assert row["category"] == "mt-bench" and row["cost_usd"] == 0.08 and row["split"] is None
    assert "oracle_model_to_route_to" not in results["model"].to_list()


def test_wide_prompts_stored_as_real_lists_are_joined_too(tmp_path):
    prompts = [["Q: which is B?"], ["Janet has 3 ducks."], ["Write a poem.", "Now shorter."]]
    results = read_results(write(routerbench(prompts), tmp_path / "rb.parquet"))
    assert results.filter(model="gpt-4")["prompt"].to_list() == [
        "Janet has 3 ducks.",
        "Q: which is B?",
        "Write a poem.\nNow shorter.",
    ]


def test_wide_text_that_only_looks_like_a_list_is_kept(tmp_path):
    frame = routerbench(["[1, 2, 3] sorted?", "[1, 2]", "['a', 3]"])
    assert set(read_results(write(frame, tmp_path / "rb.csv"))["prompt"]) == {"[1, 2, 3] sorted?", "[1, 2]", "['a', 3]"}


def test_wide_cost_column_without_score_column_is_an_error_naming_it(tmp_path):
    frame = routerbench(STRINGIFIED).drop("meta/llama-2-70b")
    with pytest.raises(ResultsError, match=r"column 'meta/llama-2-70b\|model_response' has no score column"):
        read_results(write(frame, tmp_path / "rb.parquet"))
    only_cost = frame.select("sample_id", "prompt", "meta/llama-2-70b|total_cost")
    with pytest.raises(ResultsError, match=r"column 'meta/llama-2-70b\|total_cost' has no score column"):
        read_results(write(only_cost, tmp_path / "cost_only.parquet"))


def test_explicit_wide_format_with_score_columns_only(tmp_path):
    frame = pl.DataFrame({"sample_id": ["a", "b"], "prompt": ["x", "y"], "m1": [1, 0], "m2": [True, True]})
    path = write(frame, tmp_path / "plain_wide.csv")
    results = read_results(path, format="wide")
    assert results.select("model", "prompt_id", "score").rows() == [
        ("m1", "a", 1.0),
        ("m1", "b", 0.0),
        ("m2", "a", 1.0),
        ("m2", "b", 1.0),
    ]
    with pytest.raises(ResultsError, match=r"missing column\(s\) \['model', 'score'\]"):  # auto does not guess this one
        read_results(path)


def test_wide_score_error_names_the_model_column_and_prompt(tmp_path):
    frame = routerbench(STRINGIFIED).with_columns(pl.Series("gpt-4", [1.0, 3.0, 0.9]))
    with pytest.raises(ResultsError) as err:
        read_results(write(frame, tmp_path / "rb.parquet"))
    assert "rb.parquet: column 'gpt-4', row 2 (model='gpt-4', prompt_id='gsm8k.3'): score outside [0, 1]: 3.0" in str(
        err.value
    )


# --- lm-evaluation-harness --log_samples -------------------------------------------------------------------------

STAMP = "2024-06-01T10-20-30.123456"


def new_generate(doc_id: int, question: str, output: str, em: float) -> list[dict]:
    """A generate_until sample as lm-eval 0.4.3+ writes it (``gen_args_0`` arguments, two filters)."""
    shared = {
        "doc_id": doc_id,
        "doc": {"question": question, "answer": "#### 4"},
        "target": "4",
        "arguments": {"gen_args_0": {"arg_0": f"Question: {question}\nAnswer:", "arg_1": {"until": ["\n\n"]}}},
        "resps": [[output]],
        "metrics": ["exact_match"],
    }
    return [
        {**shared, "filtered_resps": ["[invalid]"], "filter": "strict-match", "exact_match": em},
        {**shared, "filtered_resps": ["4"], "filter": "flexible-extract", "exact_match": 1.0},
    ]


def old_multiple_choice(doc_id: int, question: str, acc: bool) -> dict:
    """A loglikelihood sample as older lm-eval wrote it (list arguments, stringified (logprob, greedy) pairs)."""
    context = f"{question}\nAnswer:"
    return {
        "doc_id": doc_id,
        "doc": {"question": question, "choices": ["yes", "no"], "label": 0},
        "target": 0,
        "arguments": [[context, " yes"], [context, " no"]],
        "resps": [[["-0.5", "True"]], [["-2.1", "False"]]],
        "filtered_resps": [["-0.5", "True"], ["-2.1", "False"]],
        "acc": acc,
        "acc_norm": 0.0,
    }


@pytest.fixture
def lm_eval_dir(tmp_path) -> Path:
    run = tmp_path / "out" / "org__model-7b"
    write_lines(
        run / f"samples_gsm8k_{STAMP}.jsonl",
        [*new_generate(0, "2+2?", "2+2 is 4", 0.0), *new_generate(1, "1+3?", "It is 4.\n\nDone", 1.0)],
    )
    write_lines(
        run / f"samples_boolq_lite_{STAMP}.jsonl",
        [old_multiple_choice(0, "Is water wet?", True), old_multiple_choice(5, "Is fire cold?", False)],
    )
    (run / f"results_{STAMP}.json").write_text(
        json.dumps({"results": {}, "model_name": "org/model-7b", "config": {"model_args": "pretrained=ignored"}})
    )
    return run


def test_lm_eval_directory_reads_every_task_with_the_results_model(lm_eval_dir):
    results = read_results(lm_eval_dir)
    assert results.select("model", "prompt_id", "score", "category").rows() == [
        ("org/model-7b", "boolq_lite/0", 1.0, "boolq_lite"),
        ("org/model-7b", "boolq_lite/5", 0.0, "boolq_lite"),
        ("org/model-7b", "gsm8k/0", 0.0, "gsm8k"),  # the first filter (strict-match) scores
        ("org/model-7b", "gsm8k/1", 1.0, "gsm8k"),
    ]
    assert results["prompt"].to_list() == [
        "Is water wet?\nAnswer:",
        "Is fire cold?\nAnswer:",
        "Question: 2+2?\nAnswer:",
        "Question: 1+3?\nAnswer:",
    ]
    assert results["response"].to_list() == [None, None, "2+2 is 4", "It is 4.\n\nDone"]
    assert results["reference"].to_list() == ["0", "0", "4", "4"]
    assert results["cost_usd"].null_count() == 4
    assert read_results(lm_eval_dir.parent).equals(results)  # lm-eval's output_path: one folder per model


def test_lm_eval_score_field_can_name_metric_and_filter(lm_eval_dir):
    gsm8k = lm_eval_dir / f"samples_gsm8k_{STAMP}.jsonl"
    assert read_results(gsm8k, score_field="exact_match,flexible-extract")["score"].to_list() == [1.0, 1.0]
    boolq = lm_eval_dir / f"samples_boolq_lite_{STAMP}.jsonl"
    assert read_results(boolq, score_field="acc_norm")["score"].to_list() == [0.0, 0.0]
    with pytest.raises(ResultsError, match=r"no records with filter 'nope' \(have \['strict-match', 'flexible"):
        read_results(gsm8k, score_field="exact_match,nope")


def test_lm_eval_model_from_model_args_and_from_the_model_argument(tmp_path):
    path = write_lines(tmp_path / "run" / f"samples_boolq_{STAMP}.jsonl", [old_multiple_choice(3, "Q?", True)])
    config = {"model": "hf", "model_args": "pretrained=EleutherAI/pythia-160m,dtype=float"}
    (tmp_path / "run" / f"results_{STAMP}.json").write_text(json.dumps({"config": config}))
    assert read_results(path)["model"].to_list() == ["EleutherAI/pythia-160m"]
    assert read_results(path, model="mine")["model"].to_list() == ["mine"]


def test_lm_eval_same_run_results_file_wins_over_other_runs(tmp_path):
    run = tmp_path / "run"
    write_lines(run / f"samples_boolq_{STAMP}.jsonl", [old_multiple_choice(3, "Q?", True)])
    (run / f"results_{STAMP}.json").write_text(json.dumps({"model_name": "this-run"}))
    (run / "results_2023-01-01T00-00-00.000001.json").write_text(json.dumps({"model_name": "older-run"}))
    assert read_results(run)["model"].to_list() == ["this-run"]


def test_lm_eval_without_model_name_asks_for_one(tmp_path):
    path = write_lines(tmp_path / f"samples_boolq_{STAMP}.jsonl", [old_multiple_choice(3, "Q?", True)])
    with pytest.raises(ResultsError, match=r"no model name \(no results_\*\.json beside it\); pass model="):
        read_results(path)


def test_lm_eval_detected_from_the_records_and_task_key(tmp_path):
    record = {**new_generate(9, "5-1?", "4", 1.0)[0], "task": "arith"}
    del record["filter"]
    results = read_results(write_lines(tmp_path / "exported.jsonl", [record]), model="m")
    assert results.select("prompt_id", "score", "prompt").row(0) == ("arith/9", 1.0, "Question: 5-1?\nAnswer:")


@pytest.mark.parametrize(
    ("value", "problem"),
    [(1.5, "score outside [0, 1]: 1.5"), (None, "score is null: None"), ([1, 2], "score is not a number: [1, 2]")],
)
def test_lm_eval_bad_metric_names_file_field_line_and_value(tmp_path, value, problem):
    records = [old_multiple_choice(0, "A?", True), {**old_multiple_choice(4, "B?", True), "acc": value}]
    path = write_lines(tmp_path / f"samples_boolq_{STAMP}.jsonl", records)
    with pytest.raises(ResultsError) as err:
        read_results(path, model="m")
    assert str(err.value) == f"{path}: column 'acc', line 2 (model='m', prompt_id='boolq/4'): {problem}"


# --- bad inputs ---------------------------------------------------------------------------------------------------


def long_rows(**changes) -> pl.DataFrame:
    """Three valid long rows with some cells of the last one changed."""
    rows = {
        "model": ["a", "a", "b"],
        "prompt_id": ["p1", "p2", "p1"],
        "prompt": ["one", "two", "one"],
        "score": [1.0, 0.0, 1.0],
        "cost_usd": [0.1, 0.1, 0.2],
        "input_tokens": [5, 6, 5],
    }
    for name, value in changes.items():
        rows[name] = [*rows[name][:-1], value]
    return pl.DataFrame(rows, strict=False)


@pytest.mark.parametrize(
    ("changes", "column", "problem"),
    [
        ({"score": 1.25}, "score", "score outside [0, 1]: 1.25"),
        ({"score": -0.5}, "score", "score outside [0, 1]: -0.5"),
        ({"score": math.nan}, "score", "score is NaN: nan"),
        ({"score": None}, "score", "score is null: None"),
        ({"cost_usd": -0.01}, "cost_usd", "negative cost: -0.01"),
        ({"input_tokens": -3}, "input_tokens", "negative token count: -3"),
        ({"prompt": "ONE"}, "prompt", "the same prompt_id with another prompt than row 1 ('one'): 'ONE'"),
        (
            {"model": "a", "score": 0.0},
            "score",
            "duplicate (model, prompt_id) with another score than row 1 (1.0): 0.0",
        ),
    ],
)
def test_bad_long_row_names_file_column_row_and_value(tmp_path, changes, column, problem):
    path = write(long_rows(**changes), tmp_path / "bad.parquet")
    with pytest.raises(ResultsError) as err:
        read_results(path)
    model = changes.get("model", "b")
    assert str(err.value) == f"{path}: column {column!r}, row 3 (model={model!r}, prompt_id='p1'): {problem}"
    assert err.value.column == column and err.value.row == "row 3"


@pytest.mark.parametrize(
    ("changes", "column", "problem"),
    [
        ({"cost_usd": math.inf}, "cost_usd", "cost is not finite: inf"),
        ({"cost_usd": -math.inf}, "cost_usd", "cost is not finite: -inf"),
        ({"cost_usd": math.nan}, "cost_usd", "cost is NaN: nan"),
        ({"input_tokens": 2**31}, "input_tokens", "token count above 2,147,483,647: 2147483648"),
        ({"input_tokens": 1e20}, "input_tokens", "token count above 2,147,483,647: 1e+20"),
        ({"input_tokens": -1e20}, "input_tokens", "negative token count: -1e+20"),
        ({"input_tokens": math.inf}, "input_tokens", "input_tokens is not a whole number: inf"),
    ],
)
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_non_finite_or_out_of_range_costs_and_tokens_are_refused(tmp_path, changes, column, problem, suffix):
    path = write(long_rows(**changes), tmp_path / f"bad{suffix}")
    with pytest.raises(ResultsError) as err:
        read_results(path)
    shown = problem if suffix == ".parquet" else problem.rsplit(": ", 1)[0]  # CSV text shows its own spelling
    assert f"column {column!r}, row 3 (model='b', prompt_id='p1'): {shown}" in str(err.value)


@pytest.mark.parametrize("text", ["inf", "-Infinity", "1e400", "NaN"])
def test_non_finite_costs_in_a_wide_table_are_refused(tmp_path, text):
    path = tmp_path / "rb.csv"
    path.write_text(f"sample_id,prompt,m1,m1|total_cost\na,x?,1,0.01\nb,y?,0,{text}\n")
    with pytest.raises(
        ResultsError, match=r"column 'm1\|total_cost', row 2 \(model='m1', .*: cost is (not finite|NaN)"
    ):
        read_results(path)


def test_alias_is_named_in_errors_and_csv_text_scores_are_checked(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("model,id,correct,prompt_tokens\na,1,yes,3\n")
    with pytest.raises(ResultsError, match=r"column 'correct', row 1 \(model='a', prompt_id='1'\): .*'yes'"):
        read_results(path)
    path.write_text("model,id,correct,prompt_tokens\na,1,TRUE,2.5\n")
    with pytest.raises(ResultsError, match=r"column 'prompt_tokens', row 1 .*not a whole number: 2.5"):
        read_results(path)
    path.write_text("model,id,correct,prompt_tokens\na,1,TRUE,true\n")
    with pytest.raises(ResultsError, match=r"column 'prompt_tokens', row 1 .*not a whole number: True"):
        read_results(path)
    path.write_text("model,id,correct,prompt_tokens,cost\na,1,TRUE,7.0,n/a\n")
    with pytest.raises(ResultsError, match=r"column 'cost', row 1 .*cost_usd is not a number: 'n/a'"):
        read_results(path)


def test_identical_duplicates_are_dropped(tmp_path):
    frame = pl.concat([long_rows(), long_rows().slice(0, 1)])
    assert read_results(write(frame, tmp_path / "dup.csv")).height == 3


def test_bad_split_value_is_named(tmp_path):
    frame = long_rows().with_columns(split=pl.Series(["train", "test", "holdout"]))
    with pytest.raises(ResultsError, match=r"column 'split', row 3 .*: split is not train/validation/test: 'holdout'"):
        read_results(write(frame, tmp_path / "s.jsonl"))


def test_missing_columns_list_what_the_file_has(tmp_path):
    path = write(pl.DataFrame({"model": ["a"], "text": ["x"], "score": [1]}), tmp_path / "few.csv")
    with pytest.raises(ResultsError, match=r"few\.csv: missing column\(s\) \['prompt_id'\] \(have \['model', 'text'"):
        read_results(path)


@pytest.mark.parametrize("name", ["routerbench_0shot.pkl", "scores.xlsx", "scores"])
def test_unsupported_suffix_is_named(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04")
    with pytest.raises(ResultsError, match=r"unsupported file suffix") as err:
        read_results(path)
    assert ("pandas.read_pickle" in str(err.value)) == name.endswith(".pkl")


@pytest.mark.parametrize(("name", "content"), [("e.csv", ""), ("h.csv", "model,prompt_id,score\n"), ("e.jsonl", "\n")])
def test_empty_files_are_errors(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ResultsError, match=rf"{name}: empty file"):
        read_results(tmp_path / name)


def test_empty_lm_eval_samples_file_is_an_error(tmp_path):
    (tmp_path / f"samples_boolq_{STAMP}.jsonl").write_text("")
    with pytest.raises(ResultsError, match=r"empty file"):
        read_results(tmp_path / f"samples_boolq_{STAMP}.jsonl", model="m")


def test_every_error_message_is_one_line(tmp_path):
    frame = long_rows(prompt="multi\nline\nprompt")
    with pytest.raises(ResultsError) as err:
        read_results(write(frame, tmp_path / "nl.parquet"))
    assert "\n" not in str(err.value) and "'multi\\nline\\nprompt'" in str(err.value)
