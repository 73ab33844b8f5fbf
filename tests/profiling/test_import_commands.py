"""`uniroute import-prompts`, `import-results`, `datasets` and `graders` as a user types them: one-line errors
with exit code 2, nothing written on bad input; and a dataset adapter installed through its entry point."""

from __future__ import annotations

import json
import textwrap
import time

import polars as pl
import pytest

import warehouse as wh
from profiling.datasets import adapter_names, import_dataset
from serving.cli import main
from tests.conftest import alias_bomb, corrupt_warehouse


@pytest.fixture
def warehouse(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return path


def _prompts(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_import_prompts_then_datasets(warehouse, tmp_path, capsys):
    rows = [{"prompt_id": i, "prompt": f"{i} + 1?", "reference": str(i + 1), "category": "a"} for i in range(10)]
    path = _prompts(tmp_path / "p.jsonl", rows)
    assert main(["import-prompts", str(path), "--dataset", "sums", "--grader", "numeric", "--max-tokens", "8"]) == 0
    assert "dataset sums: 10 prompts imported" in capsys.readouterr().out
    assert main(["datasets"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[1].split()[:3] == ["sums", "10", "true"]
    with wh.connect(warehouse) as con:
        assert json.loads(wh.read_prompts(con)["request_params"][0]) == {"max_tokens": 8, "temperature": 0.0}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt_id": 1, "prompt": "x?", "reference": "1", "grader": "psychic"}, "unknown grader 'psychic'"),
        ({"prompt_id": 1, "prompt": "x?", "reference": "one", "grader": "numeric"}, "'one'"),
        ({"prompt_id": 1, "prompt": "x?", "grader": "code"}, "tests"),
    ],
)
def test_a_bad_prompt_file_is_one_line_exit_2_and_writes_nothing(warehouse, tmp_path, capsys, row, message):
    good = _prompts(tmp_path / "good.jsonl", [{"prompt_id": 0, "prompt": "y?", "reference": "1", "grader": "numeric"}])
    assert main(["import-prompts", str(good), "--dataset", "d"]) == 0
    capsys.readouterr()
    assert main(["import-prompts", str(_prompts(tmp_path / "bad.jsonl", [row])), "--dataset", "d"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniroute import-prompts: ") and message in err and "\n" not in err
    with wh.connect(warehouse) as con:
        assert wh.read_prompts(con)["prompt_id"].to_list() == ["d/0"]


def test_import_results_adds_import_only_llms_to_the_catalog(warehouse, tmp_path, capsys):
    catalog = tmp_path / "llms.yaml"
    catalog.write_text("# mine\nllms:\n")
    table = pl.DataFrame(
        {"sample_id": ["a", "b"], "prompt": ["Q a?", "Q b?"], "m1": [1.0, 0.0], "m1|total_cost": [0.01, 0.02]}
    )
    table.write_csv(tmp_path / "wide.csv")
    argv = ["import-results", str(tmp_path / "wide.csv"), "--dataset", "rb", "--catalog", str(catalog)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 answers stored, 0 already stored, unchanged; 2 grades written; 1 LLMs (2 answers with a per-query" in out
    assert "import-only: m1" in out
    assert catalog.read_text().startswith("# mine") and "base_url: null" in catalog.read_text()
    table.with_columns(pl.Series("m1", [1.0, 7.0])).write_csv(tmp_path / "wide.csv")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "7" in err and "m1" in err and len(err.strip().splitlines()) == 1


def test_graders_lists_each_grader_with_its_version(capsys):
    assert main(["graders"]) == 0
    out = capsys.readouterr().out
    for name in ("code", "exact_match", "llm_judge", "mmlu_pro_letter", "multiple_choice", "numeric", "regex"):
        assert any(line.startswith(f"{name} ") and " v1 " in line for line in out.splitlines()), name


ADAPTER = '''
import polars as pl
from profiling.datasets import DatasetSpec, normalise_rows


class TsvAdapter:
    """question<TAB>answer lines."""

    name = "qa_tsv"

    def load(self, path):
        lines = [line.split("\\t") for line in path.read_text().splitlines() if line]
        rows = pl.DataFrame({"prompt_id": [str(i) for i in range(len(lines))], "prompt": [q for q, _ in lines],
                             "reference": [a for _, a in lines]})
        return normalise_rows(rows, path.name), DatasetSpec(grader="exact_match")

    def recorded_responses(self, path):
        return None
'''


def test_a_dataset_adapter_from_an_entry_point(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    (root / "uniroute_tsv.py").write_text(textwrap.dedent(ADAPTER))
    info = root / "uniroute_tsv-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: uniroute-tsv\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[uniroute.datasets]\nqa_tsv = uniroute_tsv:TsvAdapter\n")
    monkeypatch.syspath_prepend(str(root))
    assert "qa_tsv" in adapter_names()
    (tmp_path / "qa.tsv").write_text("Capital of Peru?\tLima\nCapital of Chad?\tN'Djamena\n")
    with wh.connect(tmp_path / "w.duckdb") as con:
        prompts = import_dataset(con, tmp_path / "qa.tsv", "qa", adapter="qa_tsv")
    assert prompts["reference"].to_list() == ["Lima", "N'Djamena"] and set(prompts["grader"]) == {"exact_match"}


def _results(n: int = 4, models=("m1", "m2"), **columns) -> pl.DataFrame:
    """A long results table: ``n`` prompts answered by each of ``models``, with per-query costs unless replaced."""
    rows = pl.DataFrame(
        {
            "model": [m for m in models for _ in range(n)],
            "prompt_id": [f"q{i}" for i in range(n)] * len(models),
            "prompt": [f"What is {i} + {i}?" for i in range(n)] * len(models),
            "response": [f"It is {2 * i}." for i in range(n)] * len(models),
            "score": [1.0, 0.0] * (n * len(models) // 2),
            "cost_usd": [0.001 * (i + 1) for i in range(n * len(models))],
            "split": ["validation"] * (n * len(models)),
        }
    )
    return rows.with_columns(**columns) if columns else rows


def _import(tmp_path, table: pl.DataFrame, *more: str, name: str = "r.parquet") -> list[str]:
    table.write_parquet(tmp_path / name)
    return [
        "import-results",
        str(tmp_path / name),
        "--dataset",
        "mine",
        "--catalog",
        str(tmp_path / "llms.yaml"),
        *more,
    ]


def test_reimport_says_what_it_stored_and_replace_archives_what_the_file_changes(warehouse, tmp_path, capsys):
    (tmp_path / "llms.yaml").write_text("llms:\n")
    assert main(_import(tmp_path, _results())) == 0
    capsys.readouterr()
    corrected = _results().with_columns(cost_usd=pl.when(pl.col("prompt_id") == "q1").then(0.5).otherwise("cost_usd"))
    argv = _import(tmp_path, corrected)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 answers stored, 6 already stored, unchanged" in out
    assert "2 stored answers differ from the file (cost, tokens, response or score) and were kept: --replace" in out
    with wh.connect(warehouse) as con:
        assert 0.5 not in wh.read_responses(con)["cost_usd"].to_list()  # insert-only: nothing changed
    assert main([*argv, "--replace"]) == 0
    out = capsys.readouterr().out
    assert "2 answers stored (2 replacing answers now archived), 6 already stored, unchanged; 2 grades written" in out
    with wh.connect(warehouse) as con:
        costs = wh.read_responses(con).filter(prompt_id="mine/q1")["cost_usd"].to_list()
        archived = con.sql("SELECT model, prompt_id, cost_usd, reason FROM responses_archive ORDER BY model").pl()
        assert costs == [0.5, 0.5] and wh.read_grades(con).height == 8
        assert archived.rows() == [("m1", "mine/q1", 0.002, "re-imported"), ("m2", "mine/q1", 0.006, "re-imported")]
        assert con.sql("SELECT count(*) FROM grades_archive").fetchall() == [(2,)]
    assert main([*argv, "--replace"]) == 0  # idempotent
    assert "0 answers stored, 8 already stored, unchanged; 0 grades written" in capsys.readouterr().out
    with wh.connect(warehouse) as con:
        assert con.sql("SELECT count(*) FROM responses_archive").fetchall() == [(2,)]


def test_a_changed_score_differs_too(warehouse, tmp_path, capsys):
    (tmp_path / "llms.yaml").write_text("llms:\n")
    assert main(_import(tmp_path, _results())) == 0
    capsys.readouterr()
    flipped = _results().with_columns(score=pl.when(pl.col("prompt_id") == "q0").then(0.0).otherwise("score"))
    assert main([*_import(tmp_path, flipped), "--replace"]) == 0
    assert "2 answers stored (2 replacing" in capsys.readouterr().out
    with wh.connect(warehouse) as con:
        assert wh.read_outcomes(con).filter(prompt_id="mine/q0")["score"].to_list() == [0.0, 0.0]


def test_an_import_without_any_price_is_refused_in_one_line_and_writes_nothing(warehouse, tmp_path, capsys):
    catalog = tmp_path / "llms.yaml"
    catalog.write_text("# mine\nllms:\n")
    no_costs = _results(cost_usd=pl.lit(None, pl.Float64))
    assert main(_import(tmp_path, no_costs)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniroute import-results: no price for 'm1', 'm2': no cost_usd in the results")
    assert "--price-file FILE" in err and "\n" not in err and len(err) <= 300
    assert catalog.read_text() == "# mine\nllms:\n"
    with wh.connect(warehouse) as con:
        assert wh.read_prompts(con).height == 0 and wh.read_llms(con).height == 0


def test_a_price_file_prices_the_imported_llms_per_query(warehouse, tmp_path, capsys):
    catalog = tmp_path / "llms.yaml"
    catalog.write_text("# mine\nllms:\n")
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "- {model: m1, usd_per_query: 0.002}\n- {model: m2, usd_per_query: 0.01}\n- {model: x, usd_per_query: 1}\n"
    )
    no_costs = _results(cost_usd=pl.lit(None, pl.Float64), response=pl.lit(None, pl.String))
    assert main([*_import(tmp_path, no_costs), "--price-file", str(prices)]) == 0
    capsys.readouterr()
    entries = {r["name"]: r for r in wh.load_catalog(catalog).iter_rows(named=True)}
    assert entries["m1"]["usd_per_query"] == 0.002 and "x" not in entries  # only the imported LLMs
    with wh.connect(warehouse) as con:
        assert dict(wh.read_costs(con).select("model", "cost").iter_rows()) == {"m1": 0.002, "m2": 0.01}
        assert wh.read_cost_basis(con, ["m1", "m2"])["cost_basis"].to_list() == ["price per query"] * 2
    prices.write_text("m1: {usd_per_query: 0.003}\n")  # another price for a priced entry
    assert main([*_import(tmp_path, no_costs), "--price-file", str(prices)]) == 2
    err = capsys.readouterr().err.strip()
    assert "model 'm1': usd_per_query=0.003, but the catalog has 0.002" in err and "\n" not in err
    prices.write_text("m1: {usd_per_query: .inf}\n")
    assert main([*_import(tmp_path, no_costs), "--price-file", str(prices)]) == 2
    assert "row 1 (model='m1'): usd_per_query: Input should be a finite number" in capsys.readouterr().err


def test_a_price_file_fills_a_price_an_existing_entry_lacks(warehouse, tmp_path, capsys):
    catalog = tmp_path / "llms.yaml"
    catalog.write_text("llms:\n  - {name: m1, base_url: null}  # imported earlier\n")
    (tmp_path / "p.csv").write_text("model,usd_per_query\nm1,0.004\n")
    argv = _import(tmp_path, _results(models=("m1",), cost_usd=pl.lit(None, pl.Float64)))
    assert main(["sync-catalog", str(catalog)]) == 0
    assert main([*argv, "--price-file", str(tmp_path / "p.csv")]) == 0
    assert "prices from" in capsys.readouterr().out and "# imported earlier" in catalog.read_text()
    assert wh.load_catalog(catalog)["usd_per_query"].to_list() == [0.004]


def test_tokens_are_estimated_with_the_embedders_tokenizer_where_per_token_prices_apply(warehouse, tmp_path, capsys):
    from router_core import count_tokens

    (tmp_path / "llms.yaml").write_text("llms:\n")
    (tmp_path / "p.csv").write_text("model,usd_per_mtok_in,usd_per_mtok_out\nm1,1,2\nm2,1,2\n")
    table = _results(cost_usd=pl.lit(None, pl.Float64)).with_columns(
        response=pl.when(pl.col("model") == "m2").then(None).otherwise("response")  # no text: nothing to count
    )
    assert main([*_import(tmp_path, table), "--price-file", str(tmp_path / "p.csv")]) == 2  # m2 cannot be priced
    assert "no price for 'm2'" in capsys.readouterr().err
    assert main([*_import(tmp_path, table), "--price-file", str(tmp_path / "p.csv"), "--models", "m1"]) == 0
    assert "4 with estimated tokens" in capsys.readouterr().out
    with wh.connect(warehouse) as con:
        stored = wh.read_responses(con).sort("prompt_id")
        expected_in = count_tokens(wh.read_prompts(con).sort("prompt_id")["prompt"].to_list())
        assert stored["prompt_tokens"].to_list() == expected_in
        assert stored["completion_tokens"].to_list() == count_tokens(stored["response"].to_list())
        assert stored["tokens_estimated"].to_list() == [True] * 4
        assert wh.read_cost_basis(con, ["m1"]).row(0) == ("m1", "catalog price x estimated tokens")
        cost = wh.read_query_costs(con, ["m1"], ["validation"])["cost"][0]
        assert cost == pytest.approx((stored["prompt_tokens"][0] * 1 + stored["completion_tokens"][0] * 2) / 1e6)


def test_models_and_exclude_models_pick_llms_and_unknown_names_are_errors(warehouse, tmp_path, capsys):
    (tmp_path / "llms.yaml").write_text("llms:\n")
    table = _results(models=("m1", "m2", "m3"))
    assert main([*_import(tmp_path, table), "--models", "m1", "nope"]) == 2
    assert "--models: 'nope' not in the results (their LLMs: 'm1', 'm2', 'm3')" in capsys.readouterr().err
    assert main([*_import(tmp_path, table), "--exclude-models", "m9"]) == 2
    assert "--exclude-models: 'm9' not in the results" in capsys.readouterr().err
    assert main([*_import(tmp_path, table), "--exclude-models", "m2"]) == 0
    with wh.connect(warehouse) as con:
        assert sorted(set(wh.read_responses(con)["model"])) == ["m1", "m3"]
        assert wh.read_llms(con)["name"].to_list() == ["m1", "m3"]


def test_results_only_prompts_are_graded_imported_by_default(warehouse, tmp_path, capsys):
    path = _prompts(tmp_path / "p.jsonl", [{"prompt_id": i, "prompt": f"{i}?"} for i in range(3)])
    assert main(["import-prompts", str(path), "--dataset", "held", "--results-only"]) == 0
    with wh.connect(warehouse) as con:
        assert set(wh.read_prompts(con)["grader"]) == {"imported"}
        assert wh.read_datasets(con)["collectable"].to_list() == [False]


@pytest.mark.parametrize("bad", ["../../x", "m\x1b[2J", "uniroute", "x" * 500])
def test_an_llm_name_that_breaks_the_rule_is_refused_in_one_line_and_nothing_is_written(
    warehouse, tmp_path, capsys, bad
):
    catalog = tmp_path / "llms.yaml"
    catalog.write_text("llms:\n")
    assert main(_import(tmp_path, _results(models=("m1", bad)))) == 2
    err = capsys.readouterr().err.strip()
    shown = wh.shown_name(bad)
    assert err.startswith(f"uniroute import-results: {tmp_path / 'r.parquet'}: model: {shown} is not a valid LLM name")
    assert "\n" not in err and "\x1b" not in err and len(err) <= 300
    assert catalog.read_text() == "llms:\n"
    with wh.connect(warehouse) as con:
        assert wh.read_llms(con).height == 0 and wh.read_prompts(con).height == 0


def test_rename_stores_a_tables_llm_under_a_valid_name(warehouse, tmp_path, capsys):
    (tmp_path / "llms.yaml").write_text("llms:\n")
    wide = pl.DataFrame(
        {"sample_id": ["a", "b"], "prompt": ["Q?", "R?"], "m1": [1.0, 0.0], "meta/llama-2-70b": [0.0, 1.0]}
    ).with_columns(pl.lit(0.2).alias("m1|total_cost"), pl.lit(0.3).alias("meta/llama-2-70b|total_cost"))
    argv = _import(tmp_path, wide, name="wide.csv")
    wide.write_csv(tmp_path / "wide.csv")
    assert main(argv) == 2
    assert "--rename OLD=NEW" in capsys.readouterr().err  # the error says how
    assert main([*argv, "--rename", "meta/llama-2-70b=m1"]) == 2  # two LLMs under one name
    assert "--rename: 'm1' would name two of the results' LLMs" in capsys.readouterr().err
    assert main([*argv, "--rename", "meta/llama-3=llama-3"]) == 2
    assert "--rename: 'meta/llama-3' not in the results" in capsys.readouterr().err
    assert main([*argv, "--rename", "meta/llama-2-70b=llama-2-70b"]) == 0
    with wh.connect(warehouse) as con:
        stored = wh.read_responses(con, ["llama-2-70b"])
        assert stored.height == 2 and set(wh.read_llms(con)["name"]) == {"m1", "llama-2-70b"}
    assert "llama-2-70b" in (tmp_path / "llms.yaml").read_text()


def test_names_from_every_results_format_and_the_model_flag_are_checked(warehouse, tmp_path, capsys):
    (tmp_path / "llms.yaml").write_text("llms:\n")
    wide = pl.DataFrame(
        {"sample_id": ["a"], "prompt": ["Q?"], "m1": [1.0], "m1|total_cost": [0.1], "meta/llama-2-70b": [0.0]}
    ).with_columns(pl.lit(0.2).alias("meta/llama-2-70b|total_cost"))
    argv = _import(tmp_path, wide, name="wide.csv")
    wide.write_csv(tmp_path / "wide.csv")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model: 'meta/llama-2-70b' is not a valid LLM name: has a path separator '/'" in err
    assert "--exclude-models" in err
    assert main([*argv, "--exclude-models", "meta/llama-2-70b"]) == 0  # the way round it: leave it out
    capsys.readouterr()
    samples = tmp_path / "samples_arith_2024-01-01T00-00-00.000001.jsonl"
    samples.write_text(json.dumps({"doc_id": 0, "arguments": [["1+1?", ""]], "resps": [["2"]], "acc": 1.0}) + "\n")
    (tmp_path / "results_2024-01-01T00-00-00.000001.json").write_text(
        json.dumps({"config": {"model_args": "pretrained=EleutherAI/pythia-160m"}})
    )
    argv = ["import-results", str(samples), "--dataset", "ev", "--catalog", str(tmp_path / "llms.yaml")]
    assert main(argv) == 2
    assert "'EleutherAI/pythia-160m' is not a valid LLM name" in capsys.readouterr().err
    assert main([*argv, "--model", "../pythia"]) == 2
    assert "import-results: --model: '../pythia' is not a valid LLM name" in capsys.readouterr().err
    with wh.connect(warehouse) as con:
        assert wh.read_llms(con)["name"].to_list() == ["m1"]


@pytest.mark.parametrize(
    ("text", "shown"),
    [("- {model: ../m1, usd_per_query: 1}\n", "'../m1'"), ('"m\\e": {usd_per_query: 1}\n', "'m\\x1b'")],
)
def test_a_price_file_with_a_bad_name_is_refused(warehouse, tmp_path, capsys, text, shown):
    (tmp_path / "llms.yaml").write_text("llms:\n")
    (tmp_path / "prices.yaml").write_text(text)
    no_costs = _results(cost_usd=pl.lit(None, pl.Float64))
    assert main([*_import(tmp_path, no_costs), "--price-file", str(tmp_path / "prices.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"prices.yaml: row 1 (model={shown}): model: not a valid LLM name" in err and "\x1b" not in err


def test_dagster_partitions_are_only_made_from_checked_names(instance):
    from profiling.cli import _register_partitions

    with pytest.raises(wh.LLMNameError, match=r"name: '\.\./x' is not a valid LLM name"):
        _register_partitions(["ok", "../x"])
    assert instance.get_dynamic_partitions("llm") == []


def test_price_and_spec_files_are_read_within_bounds(warehouse, tmp_path, capsys):
    from warehouse.userfiles import MAX_USER_FILE_BYTES

    (tmp_path / "llms.yaml").write_text("llms:\n")
    prices, spec = tmp_path / "prices.yaml", tmp_path / "spec.yaml"
    prices.write_text(alias_bomb("m1: {usd_per_query: *i}\n"))
    spec.write_text(alias_bomb("template: *i\n"))
    prompts = _prompts(tmp_path / "p.jsonl", [{"prompt_id": 0, "prompt": "y?", "reference": "1", "grader": "numeric"}])
    no_costs = _results(cost_usd=pl.lit(None, pl.Float64))
    for argv, where in [
        ([*_import(tmp_path, no_costs), "--price-file", str(prices)], f"{prices}: "),
        (["import-prompts", str(prompts), "--dataset", "d", "--spec", str(spec)], f"spec={str(spec)!r}: "),
    ]:
        started = time.perf_counter()
        assert main(argv) == 2
        assert time.perf_counter() - started < 1.0
        err = capsys.readouterr().err.strip()
        assert f"{where}YAML aliases expand the document by more than 100,000 nodes" in err and len(err) <= 300
    (tmp_path / "prices.csv").write_text("model,usd_per_query\n" + "m1,0.1\n" * (MAX_USER_FILE_BYTES // 7 + 1))
    assert main([*_import(tmp_path, no_costs), "--price-file", str(tmp_path / "prices.csv")]) == 2
    assert "prices.csv: file of 1,048,5" in capsys.readouterr().err
    with wh.connect(warehouse) as con:
        assert wh.read_prompts(con).height == 0 and wh.read_llms(con).height == 0


def test_a_corrupt_warehouse_is_named_by_every_command_and_none_writes_to_it(warehouse, tmp_path, capsys):
    damaged = corrupt_warehouse(warehouse)
    catalog = tmp_path / "llms.yaml"
    catalog.write_text("llms:\n  - {name: m1, base_url: null, usd_per_query: 0.1}\n")
    for argv in (
        ["sync-catalog", str(catalog)],
        ["datasets"],
        _import(tmp_path, _results(models=("m1",))),
        ["import-prompts", str(_prompts(tmp_path / "p.jsonl", [{"prompt_id": 0, "prompt": "y?"}])), "--dataset", "d"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"uniroute {argv[0]}: warehouse {warehouse} is corrupt (Corrupt database file")
        assert err.endswith("restore it from a backup or move it aside") and "\n" not in err
        assert warehouse.read_bytes() == damaged
