"""Catalog validation: each error names the entry and field; a bad catalog changes nothing."""

from __future__ import annotations

import time

import polars as pl
import pytest
import yaml

import warehouse as wh
from tests.conftest import alias_bomb

GOOD = """
defaults:
  base_url: http://127.0.0.1:8765/v1
  max_concurrency: 8
llms:
  - name: cheap
    usd_per_mtok_in: 0.1
    usd_per_mtok_out: 0.2
  - name: pricey
    model_id: vendor/pricey-v2
    base_url: https://api.example.com/v1
    api_key_env: UNIROUTE_KEY_PRICEY
    usd_per_mtok_in: 5
    usd_per_mtok_out: 15
"""


def _write(tmp_path, text: str, name: str = "llms.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_catalog_loads_with_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIROUTE_KEY_PRICEY", "sk-test")
    catalog = wh.load_catalog(_write(tmp_path, GOOD))
    rows = {r["name"]: r for r in catalog.iter_rows(named=True)}
    assert rows["cheap"]["model_id"] == "cheap" and rows["cheap"]["max_concurrency"] == 8
    assert rows["pricey"]["base_url"] == "https://api.example.com/v1"
    assert rows["pricey"]["api_key_env"] == "UNIROUTE_KEY_PRICEY" and "sk-test" not in str(catalog.rows())


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("    usd_per_mtok_in: 0.1\n", ""), "entry 'cheap' (#0): usd_per_mtok_in: Field required"),
        (("usd_per_mtok_in: 0.1", "usd_per_mtok_in: -1"), "entry 'cheap' (#0): usd_per_mtok_in: Input should be"),
        (("name: pricey", "name: cheap"), "entry 'cheap' (#1): name: duplicate name"),
        (("https://api.example.com/v1", "not a url"), "entry 'pricey' (#1): base_url: Input should be a valid URL"),
        (("    usd_per_mtok_out: 0.2\n", "    usd_per_mtok_out: 0.2\n    colour: red\n"), "(#0): colour: Extra"),
    ],
)
def test_each_error_names_entry_and_field(tmp_path, monkeypatch, edit, expected):
    monkeypatch.setenv("UNIROUTE_KEY_PRICEY", "sk-test")
    with pytest.raises(wh.CatalogError) as info:
        wh.load_catalog(_write(tmp_path, GOOD.replace(*edit)))
    assert any(p.startswith(expected) or expected in p for p in info.value.problems), info.value.problems


def test_unset_api_key_variable_is_named_but_no_key_leaks(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIROUTE_KEY_PRICEY", raising=False)
    expected = "entry 'pricey' \\(#1\\): api_key_env: variable UNIROUTE_KEY_PRICEY is not set"
    with pytest.raises(wh.CatalogError, match=expected):
        wh.load_catalog(_write(tmp_path, GOOD))


def test_csv_catalog(tmp_path):
    path = _write(
        tmp_path,
        "name,base_url,usd_per_mtok_in,usd_per_mtok_out\na,http://127.0.0.1:1/v1,1,2\nb,http://127.0.0.1:1/v1,0,0\n",
        "llms.csv",
    )
    assert wh.load_catalog(path)["name"].to_list() == ["a", "b"]


def test_sync_deactivates_removed_llms_and_a_bad_catalog_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIROUTE_KEY_PRICEY", "sk-test")
    with wh.connect(tmp_path / "w.duckdb") as con:
        wh.sync_catalog(con, _write(tmp_path, GOOD))
        only_cheap = GOOD.split("  - name: pricey")[0]
        wh.sync_catalog(con, _write(tmp_path, only_cheap))
        assert wh.read_llms(con, active_only=True)["name"].to_list() == ["cheap"]
        assert wh.read_llms(con)["name"].to_list() == ["cheap", "pricey"]
        before = wh.read_llms(con)
        with pytest.raises(wh.CatalogError):
            wh.sync_catalog(con, _write(tmp_path, GOOD.replace("usd_per_mtok_in: 0.1", "usd_per_mtok_in: -3")))
        assert wh.read_llms(con).equals(before)


def test_an_empty_catalog_deactivates_every_llm(tmp_path):
    path = tmp_path / "llms.yaml"
    path.write_text(
        "defaults: {base_url: 'http://127.0.0.1:9/v1', usd_per_mtok_in: 1, usd_per_mtok_out: 1}\nllms: [{name: a}]\n"
    )
    with wh.connect(tmp_path / "w.duckdb") as con:
        wh.sync_catalog(con, path)
        path.write_text("llms: []\n")
        assert wh.sync_catalog(con, path).height == 0
        assert wh.read_llms(con).select("name", "active").rows() == [("a", False)]


def test_an_import_only_entry_needs_no_endpoint_or_prices(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIROUTE_KEY_PRICEY", "sk-test")
    catalog = wh.load_catalog(
        _write(tmp_path, GOOD.replace("llms:\n", "llms:\n  - {name: imported, base_url: null}\n"))
    )
    row = catalog.filter(catalog["name"] == "imported").row(0, named=True)
    assert row["base_url"] is None and row["usd_per_mtok_in"] is None


@pytest.mark.parametrize(
    ("prices", "problem"),
    [
        ("usd_per_query: 0.002", None),
        ("usd_per_query: 0.002, usd_per_mtok_in: 1, usd_per_mtok_out: 2", None),
        ("usd_per_mtok_in: 1, usd_per_mtok_out: 2", None),
        ("max_concurrency: 2", "usd_per_mtok_in: Field required with a base_url (give usd_per_mtok_in and "),
        ("usd_per_query: 0.1, usd_per_mtok_in: 1", "usd_per_mtok_out: Field required with usd_per_mtok_in"),
    ],
)
def test_an_endpoint_is_priced_per_query_or_per_million_tokens(tmp_path, prices, problem):
    path = _write(tmp_path, f"llms:\n  - {{name: e, base_url: 'http://127.0.0.1:1/v1', {prices}}}\n")
    if problem is None:
        row = wh.load_catalog(path).row(0, named=True)
        assert row["usd_per_query"] == (0.002 if "usd_per_query" in prices else None)
        with wh.connect(tmp_path / "w.duckdb") as con:
            wh.sync_catalog(con, path)
            assert wh.read_llms(con)["usd_per_query"].to_list() == [row["usd_per_query"]]
        return
    with pytest.raises(wh.CatalogError) as info:
        wh.load_catalog(path)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(f"entry 'e' (#0): {problem}")


# ---- appending and pricing keep the user's file: a round-trip writer -------------------------------------------
PRICED = {"name": "new", "base_url": None, "usd_per_query": 0.01}
STYLES = {
    "safe_dump block": yaml.safe_dump(
        {"llms": [{"name": "a", "base_url": "http://127.0.0.1:9/v1", "usd_per_mtok_in": 1, "usd_per_mtok_out": 2}]},
        sort_keys=False,
    ),
    "indented dashes, comments": (
        "# my catalog\ndefaults:\n  base_url: http://127.0.0.1:9/v1  # the replay server\nllms:\n"
        "  # the cheap one\n  - name: a  # first\n    usd_per_mtok_in: 1\n    usd_per_mtok_out: 2\n# the end\n"
    ),
    "flow entries, comments": (
        "defaults: {base_url: 'http://127.0.0.1:9/v1'}  # shared\nllms:\n"
        "  - {name: a, usd_per_mtok_in: 1, usd_per_mtok_out: 2}  # cheap\n"
    ),
    "flow list": "llms: [{name: a, base_url: 'http://127.0.0.1:9/v1', usd_per_mtok_in: 1, usd_per_mtok_out: 2}]\n",
    "deeper indentation": "other_notes: 1\nllms:\n    - name: a\n      base_url: http://127.0.0.1:9/v1\n"
    "      usd_per_mtok_in: 1\n      usd_per_mtok_out: 2\n",
}


@pytest.mark.parametrize("style", list(STYLES))
def test_appending_keeps_any_yaml_style_valid_with_its_comments(tmp_path, style):
    text = STYLES[style]
    path = _write(tmp_path, text)
    catalog = wh.add_to_catalog(path, PRICED)
    assert catalog["name"].to_list() == ["a", "new"]
    written = path.read_text()
    assert yaml.safe_load(written)["llms"][0] == yaml.safe_load(text)["llms"][0]  # the old entry as it was
    if style != "flow list":  # the lines before the new entry are kept as they were (a flow list may wrap)
        assert written.startswith(text.split("\n# the end")[0].rstrip("\n"))
    comments = [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]
    assert all(comment in written for comment in comments)
    assert "base_url: null" in written and not list(tmp_path.glob(".new-*"))
    wh.edit_catalog(path, update={"a": {"usd_per_query": 0.5}})
    assert wh.load_catalog(path).filter(name="a")["usd_per_query"].item() == 0.5
    assert all(comment in path.read_text() for comment in comments)


def test_edit_refuses_an_entry_the_file_lacks_and_leaves_it(tmp_path):
    path = _write(tmp_path, STYLES["indented dashes, comments"])
    before = path.read_text()
    with pytest.raises(wh.CatalogError, match="entry 'ghost': not in the file"):
        wh.edit_catalog(path, add=[PRICED], update={"ghost": {"usd_per_query": 1.0}})
    with pytest.raises(wh.CatalogError, match="usd_per_query: Input should be a finite number"):
        wh.edit_catalog(path, update={"a": {"usd_per_query": float("inf")}})
    assert path.read_text() == before


def test_a_csv_catalog_gains_rows_and_prices(tmp_path):
    path = _write(tmp_path, "name,base_url,usd_per_mtok_in,usd_per_mtok_out\na,http://127.0.0.1:1/v1,1,2\n", "l.csv")
    wh.edit_catalog(path, add=[{"name": "b", "base_url": None}], update={"a": {"usd_per_query": 0.1}})
    rows = {r["name"]: r for r in wh.load_catalog(path).iter_rows(named=True)}
    assert rows["a"]["usd_per_query"] == 0.1 and rows["b"]["base_url"] is None


# ---- one rule for LLM names ------------------------------------------------------------------------------------
#: Names this project's fixtures, docs and data use: each must stay valid.
NAMES_IN_USE = [
    "Meta-Llama-3_1-70B", "gpt-4o-mini", "gemini-1.5-flash-002", "Qwen1.5-7B-Chat", "c4ai-command-r-v01", "cheap",
    "pricey", "my-gpt", "gpt-x", "m1", "a", "bio-pro", "last", "claude-3.5-sonnet@20240620", "llama3:8b",
    "ft:gpt-4o-mini:org:abc123", "model+v2", "7b",
]  # fmt: skip


def test_every_name_in_use_stays_valid():
    from profiling.cli import default_data_dir
    from tests.conftest import SKILLS

    mmlu_pro = default_data_dir() / "models.csv"
    if not mmlu_pro.is_file():
        pytest.skip(f"no MMLU-Pro data at {mmlu_pro}")
    names = [*NAMES_IN_USE, *SKILLS, *pl.read_csv(mmlu_pro)["model"]]
    assert len(names) > 40
    assert {name: wh.llm_name_problem(name) for name in names} == dict.fromkeys(names)


BAD_NAMES = {
    "../../x": "path separator '/'",
    "meta/llama-2-70b": "path separator '/'",
    "a\\b": "path separator '\\\\'",
    "red\x1b[31m": "control character '\\x1b'",
    "two\nlines": "control character '\\n'",
    "rtl\u202eexe": "control character '\\u202e'",
    "gpt 4": "whitespace ' '",
    "uniroute": "reserved",
    "UniRoute": "reserved",
    "a..b": "'..'",
    ".hidden": "start with a letter or a digit",
    "-flag": "start with a letter or a digit",
    "café": "the character 'é'",
    "x" * 129: "longer than 128 characters",
}


@pytest.mark.parametrize(("name", "reason"), list(BAD_NAMES.items()), ids=range(len(BAD_NAMES)))
def test_a_bad_llm_name_is_one_line_naming_the_field_and_value(name, reason):
    with pytest.raises(wh.LLMNameError) as info:
        wh.check_llm_name(name, "model")
    message = str(info.value)
    assert message.startswith(f"model: {wh.shown_name(name)} is not a valid LLM name: ") and reason in message
    assert "\n" not in message and "\x1b" not in message and "\u202e" not in message and len(message) < 180


@pytest.mark.parametrize("name", list(BAD_NAMES), ids=range(len(BAD_NAMES)))
def test_a_catalog_with_a_bad_name_is_refused_and_syncs_nothing(tmp_path, name):
    path = tmp_path / "llms.yaml"
    path.write_text(yaml.safe_dump({"llms": [{"name": "good", "base_url": None}, {"name": name, "base_url": None}]}))
    with wh.connect(tmp_path / "w.duckdb") as con:
        with pytest.raises(wh.CatalogError) as info:
            wh.sync_catalog(con, path)
        assert wh.read_llms(con).height == 0
    assert info.value.problems == [
        f"entry {name!r} (#1): name: not a valid LLM name: {wh.llm_name_problem(name)}, got {_cut(repr(name))}"
    ]
    assert "\x1b" not in str(info.value) and len(str(info.value)) <= 300


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def test_the_gateways_routed_model_is_a_reserved_name():
    from serving.chat_request import ROUTED_MODEL

    assert ROUTED_MODEL in wh.RESERVED_LLM_NAMES and wh.llm_name_problem(ROUTED_MODEL) is not None


def test_the_warehouse_refuses_a_bad_name_whoever_writes_it(tmp_path):
    row = {"base_url": None, "model_id": "m", "max_concurrency": 1, "active": True}
    with wh.connect(tmp_path / "w.duckdb") as con:
        with pytest.raises(wh.WarehouseInputError, match=r"llms\.name='\.\./x': not a valid LLM name: has a path"):
            wh.upsert_llms(con, pl.DataFrame([{"name": "ok", **row}, {"name": "../x", **row}]))
        assert wh.read_llms(con).height == 0


# ---- catalog files within bounds -------------------------------------------------------------------------------
def test_a_yaml_alias_bomb_in_a_catalog_fails_fast_in_one_short_line(tmp_path, capsys):
    from pipelines.cli import main

    path = tmp_path / "llms.yaml"
    path.write_text(alias_bomb("llms:\n  - name: *i\n    base_url: null\n"))
    assert path.stat().st_size < 1024
    started = time.perf_counter()
    assert main(["sync-catalog", str(path), "--warehouse", str(tmp_path / "w.duckdb")]) == 2
    assert time.perf_counter() - started < 0.5
    err = capsys.readouterr().err.strip()
    assert err == (
        f"uniroute sync-catalog: invalid LLM catalog {path}: YAML aliases expand the document by more than "
        "100,000 nodes (an alias bomb?)"
    )
    with pytest.raises(wh.CatalogError, match="alias bomb"):  # an edit reads it within the same bounds
        wh.add_to_catalog(path, {"name": "new", "base_url": None})
    assert path.read_text().startswith("a: &a")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("llms: &l [*l]\n", "a YAML alias refers to the node that holds it"),
        ("llms: [" * 2000 + "]" * 2000 + "\n", "YAML nested too deeply"),
        ("llms: [\n", "not valid YAML: while parsing a flow node"),
    ],
    ids=["recursive", "deep", "invalid"],
)
def test_a_malformed_yaml_catalog_is_named_in_one_line(tmp_path, text, problem):
    path = _write(tmp_path, text)
    with pytest.raises(wh.CatalogError) as info:
        wh.load_catalog(path)
    assert info.value.problems[0].startswith(problem) and len(str(info.value)) <= 300


@pytest.mark.parametrize("name", ["llms.yaml", "llms.csv"])
def test_a_catalog_above_the_size_limit_is_refused_before_it_is_parsed(tmp_path, name):
    from warehouse.userfiles import MAX_USER_FILE_BYTES

    header = "name,base_url\n" if name.endswith(".csv") else "llms:\n"
    path = _write(tmp_path, header + "#" * MAX_USER_FILE_BYTES, name)
    with pytest.raises(wh.CatalogError, match=r"file of 1,048,5\d\d bytes is above the limit of 1,048,576 bytes"):
        wh.load_catalog(path)


def test_anchors_and_merge_keys_a_catalog_uses_still_load(tmp_path):
    text = (
        "base: &base {base_url: 'http://127.0.0.1:9/v1', usd_per_query: 0.1}\n"
        "llms:\n  - {<<: *base, name: a}\n  - {<<: *base, name: b, usd_per_query: 0.2}\n"
    )
    catalog = wh.load_catalog(_write(tmp_path, "defaults: {max_concurrency: 2}\n" + text))
    assert catalog.select("name", "usd_per_query", "max_concurrency").rows() == [("a", 0.1, 2), ("b", 0.2, 2)]
