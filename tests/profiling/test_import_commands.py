"""`uniroute import-prompts`, `import-results`, `datasets` and `graders` as a user types them: one-line errors
with exit code 2, nothing written on bad input; and a dataset adapter installed through its entry point."""

from __future__ import annotations

import json
import textwrap

import polars as pl
import pytest

import warehouse as wh
from profiling.datasets import adapter_names, import_dataset
from serving.cli import main


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
