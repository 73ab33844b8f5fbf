"""What a catalog entry may hold, since the file decides where keys are sent: allowed key variables only, no
credentials in URLs, https for keys, bounded finite numbers and timeouts; every refusal names the entry, the
field and the value, masked where it could be a secret."""

from __future__ import annotations

import polars as pl
import pytest

import warehouse as wh
from serving.upstream import Timeouts
from warehouse.catalog import KeyEnvPolicy

SECRET = "s3cret-0123456789abcdef"
KEYED = {"UNIROUTE_KEY_VENDOR": "sk-test", "DAGSTER_PG_PASSWORD": "hunter2", "OPENAI_API_KEY": "sk-openai"}


def _entry(name: str, more: str = "") -> str:
    """A YAML flow entry with prices; ``more`` adds fields."""
    return f"name: {name}, usd_per_mtok_in: 1, usd_per_mtok_out: 2" + (f", {more}" if more else "")


LISTED = _entry("ok")


def _catalog(tmp_path, *entries: str) -> str:
    """A catalog of YAML flow entries; the first is always ``ok`` so indices are checked too."""
    path = tmp_path / "llms.yaml"
    lines = "\n".join(f"  - {{{entry}}}" for entry in (LISTED, *entries))
    path.write_text(f"defaults: {{base_url: 'https://api.example.com/v1'}}\nllms:\n{lines}\n")
    return path


def _problems(path, environ=KEYED, **policy) -> list[str]:
    with pytest.raises(wh.CatalogError) as info:
        wh.load_catalog(path, environ, **policy)
    return info.value.problems


def _only(problems: list[str]) -> str:
    assert len(problems) == 1, problems
    return problems[0]


# ---- timeouts -----------------------------------------------------------------------------------------------
def test_timeouts_are_float_columns_the_gateway_reads(tmp_path):
    path = _catalog(
        tmp_path,
        "name: slow, usd_per_mtok_in: 1, usd_per_mtok_out: 2, timeout_connect_s: 2, timeout_first_byte_s: 120, "
        "timeout_total_s: 900",
    )
    catalog = wh.load_catalog(path, KEYED)
    for column in ("timeout_connect_s", "timeout_first_byte_s", "timeout_total_s"):
        assert catalog.schema[column] == pl.Float64
    rows = {row["name"]: row for row in catalog.iter_rows(named=True)}
    assert Timeouts.of(rows["slow"]) == Timeouts(connect_s=2.0, first_byte_s=120.0, total_s=900.0)
    assert rows["ok"]["timeout_total_s"] is None and Timeouts.of(rows["ok"]) == Timeouts()  # the defaults
    empty = tmp_path / "empty.yaml"
    empty.write_text("llms: []\n")
    assert wh.load_catalog(empty).schema["timeout_connect_s"] == pl.Float64


def test_the_warehouse_takes_a_catalog_with_timeouts(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIROUTE_ALLOWED_KEY_PREFIX", raising=False)
    path = _catalog(tmp_path, "name: slow, usd_per_mtok_in: 1, usd_per_mtok_out: 2, timeout_total_s: 60")
    with wh.connect(tmp_path / "w.duckdb") as con:
        assert wh.sync_catalog(con, path)["timeout_total_s"].to_list() == [None, 60.0]
        assert wh.read_llms(con)["name"].to_list() == ["ok", "slow"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("timeout_connect_s: 0", "timeout_connect_s: Input should be greater than 0, got 0"),
        ("timeout_connect_s: 61", "timeout_connect_s: Input should be less than or equal to 60, got 61"),
        ("timeout_first_byte_s: 601", "timeout_first_byte_s: Input should be less than or equal to 600, got 601"),
        ("timeout_total_s: 3601", "timeout_total_s: Input should be less than or equal to 3600, got 3601"),
        ("timeout_total_s: .inf", "timeout_total_s: Input should be a finite number, got inf"),
        ("timeout_total_s: .nan", "timeout_total_s: Input should be a finite number, got nan"),
        ("timeout_first_byte_s: 90, timeout_total_s: 30", "timeout_first_byte_s: 90.0 is more than timeout_total_s"),
        ("timeout_connect_s: 20, timeout_first_byte_s: 10", "timeout_connect_s: 20.0 is more than timeout_first_b"),
        ("timeout_connect_s: 20, timeout_total_s: 10", "timeout_connect_s: 20.0 is more than timeout_total_s (10.0)"),
    ],
)
def test_timeouts_are_positive_bounded_and_ordered(tmp_path, fields, expected):
    path = _catalog(tmp_path, f"name: slow, usd_per_mtok_in: 1, usd_per_mtok_out: 2, {fields}")
    assert _only(_problems(path)).startswith(f"entry 'slow' (#1): {expected}")


# ---- key variables ------------------------------------------------------------------------------------------
def test_a_key_variable_outside_the_prefix_is_refused(tmp_path):
    path = _catalog(tmp_path, _entry("pg", "api_key_env: DAGSTER_PG_PASSWORD"))
    problem = _only(_problems(path))
    assert problem.startswith("entry 'pg' (#1): api_key_env: DAGSTER_PG_PASSWORD is not an allowed key variable")
    assert "UNIROUTE_KEY_" in problem and "UNIROUTE_ALLOWED_KEY_VARS" in problem and "hunter2" not in problem


def test_prefixed_key_variables_are_allowed_and_still_must_be_set(tmp_path):
    path = _catalog(tmp_path, _entry("v", "api_key_env: UNIROUTE_KEY_VENDOR"))
    assert wh.load_catalog(path, KEYED).filter(name="v")["api_key_env"].item() == "UNIROUTE_KEY_VENDOR"
    assert _only(_problems(path, {})) == "entry 'v' (#1): api_key_env: variable UNIROUTE_KEY_VENDOR is not set"
    bare = _catalog(tmp_path, _entry("v", "api_key_env: UNIROUTE_KEY_"))  # the prefix alone
    assert "is not an allowed key variable" in _only(_problems(bare, {"UNIROUTE_KEY_": "x"}))


def test_the_allow_list_and_prefix_come_from_the_environment_or_the_arguments(tmp_path):
    path = _catalog(tmp_path, _entry("oa", "api_key_env: OPENAI_API_KEY"))
    assert "not an allowed key variable" in _only(_problems(path))
    listed = {**KEYED, "UNIROUTE_ALLOWED_KEY_VARS": " ANTHROPIC_API_KEY , OPENAI_API_KEY,"}
    assert wh.load_catalog(path, listed).height == 2
    assert wh.load_catalog(path, KEYED, key_env_allow=["OPENAI_API_KEY"]).height == 2
    assert wh.load_catalog(path, KEYED, key_env_prefix="OPENAI_").height == 2
    assert wh.load_catalog(path, {**KEYED, "UNIROUTE_ALLOWED_KEY_PREFIX": "OPENAI_"}).height == 2
    # the arguments replace the environment's settings
    assert "not an allowed key variable" in _only(_problems(path, listed, key_env_allow=[]))
    # an empty prefix accepts no prefix at all: only listed names
    keyed = _catalog(tmp_path, _entry("v", "api_key_env: UNIROUTE_KEY_VENDOR"))
    problem = _only(_problems(keyed, {**KEYED, "UNIROUTE_ALLOWED_KEY_PREFIX": ""}))
    assert "UNIROUTE_ALLOWED_KEY_PREFIX is empty" in problem


def test_the_settings_cannot_name_themselves_as_keys():
    policy = KeyEnvPolicy.from_environ({})
    assert policy.allows("UNIROUTE_KEY_OPENAI")
    assert not any(map(policy.allows, ("UNIROUTE_ALLOWED_KEY_PREFIX", "UNIROUTE_ALLOWED_KEY_VARS", "UNIROUTE_KEY_")))


def test_add_to_catalog_applies_the_key_rule_and_leaves_the_file(tmp_path):
    path = _catalog(tmp_path)
    before = path.read_text()
    entry = {"name": "pg", "api_key_env": "DAGSTER_PG_PASSWORD", "usd_per_mtok_in": 1, "usd_per_mtok_out": 1}
    with pytest.raises(wh.CatalogError, match="'pg' \\(#1\\): api_key_env: DAGSTER_PG_PASSWORD is not an allowed"):
        wh.add_to_catalog(path, entry, KEYED)
    assert path.read_text() == before


# ---- URLs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://alice:{SECRET}@api.example.com/v1", "'https://***@api.example.com/v1'"),
        (f"https://{SECRET}@api.example.com/v1", "'https://***@api.example.com/v1'"),
    ],
)
def test_credentials_in_a_url_are_refused_and_masked(tmp_path, url, shown):
    path = _catalog(tmp_path, _entry("leaky", f"base_url: '{url}'"))
    problem = _only(_problems(path))
    assert problem.startswith("entry 'leaky' (#1): base_url: credentials in the URL are refused")
    assert problem.endswith(shown) and SECRET not in problem and "alice" not in problem


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://api.example.com/v1?key={SECRET}", "'https://api.example.com/v1?key=***'"),
        (f"https://api.example.com/v1?api-version=1&token={SECRET}", "v1?api-version=***&token=***'"),
        (f"https://api.example.com/v1#{SECRET}", "'https://api.example.com/v1#***'"),
    ],
)
def test_a_query_string_or_fragment_is_refused_and_masked(tmp_path, url, shown):
    path = _catalog(tmp_path, _entry("leaky", f"base_url: '{url}'"))
    problem = _only(_problems(path))
    assert problem.startswith("entry 'leaky' (#1): base_url: a query string or fragment is refused")
    assert problem.endswith(shown) and SECRET not in problem


@pytest.mark.parametrize(
    "url", [f"htps//alice:{SECRET}@api.example.com/v1", f"https://alice:{SECRET}@api.exa mple.com", f"alice:{SECRET}@h"]
)
def test_a_malformed_url_is_masked_too(tmp_path, url):
    path = _catalog(tmp_path, _entry("bad", f"base_url: '{url}'"))
    problem = _only(_problems(path))
    assert problem.startswith("entry 'bad' (#1): base_url: ") and SECRET not in problem, problem


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8765/v1", "http://127.9.9.9/v1", "http://localhost:1/v1", "http://[::1]:1/v1"]
)
def test_keys_may_go_to_loopback_over_http(tmp_path, url):
    path = _catalog(tmp_path, _entry("local", f"base_url: '{url}', api_key_env: UNIROUTE_KEY_VENDOR"))
    assert wh.load_catalog(path, KEYED).height == 2


@pytest.mark.parametrize(
    "url", ["http://api.example.com/v1", "http://10.0.0.8:8000/v1", "http://127.0.0.1.nip.io/v1", "http://0.0.0.0/v1"]
)
def test_keys_need_https_elsewhere(tmp_path, url):
    keyless = _catalog(tmp_path, _entry("plain", f"base_url: '{url}'"))
    assert wh.load_catalog(keyless, KEYED).height == 2  # no key: nothing to protect
    keyed = _catalog(tmp_path, _entry("plain", f"base_url: '{url}', api_key_env: UNIROUTE_KEY_VENDOR"))
    problem = _only(_problems(keyed))
    assert problem.startswith("entry 'plain' (#1): base_url: an entry with api_key_env needs https")
    assert problem.endswith(f"'{url}'")


# ---- numbers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("usd_per_mtok_in: .inf", "usd_per_mtok_in: Input should be a finite number, got inf"),
        ("usd_per_mtok_in: 1.0e+400", "usd_per_mtok_in: Input should be a finite number, got inf"),  # YAML's float
        ("usd_per_mtok_in: 1e400", "usd_per_mtok_in: Input should be a finite number, got '1e400'"),  # YAML's str
        ("usd_per_mtok_out: .nan", "usd_per_mtok_out: Input should be a finite number, got nan"),
        ("usd_per_mtok_out: 10001", "usd_per_mtok_out: Input should be less than or equal to 10000, got 10001"),
        ("usd_per_mtok_in: -1", "usd_per_mtok_in: Input should be greater than or equal to 0, got -1"),
        ("usd_per_query: .inf", "usd_per_query: Input should be a finite number, got inf"),
        ("usd_per_query: .nan", "usd_per_query: Input should be a finite number, got nan"),
        ("usd_per_query: 1001", "usd_per_query: Input should be less than or equal to 1000, got 1001"),
        ("usd_per_query: -0.5", "usd_per_query: Input should be greater than or equal to 0, got -0.5"),
        ("max_concurrency: 4097", "max_concurrency: Input should be less than or equal to 4096, got 4097"),
        ("max_concurrency: 0", "max_concurrency: Input should be greater than 0, got 0"),
        ("requests_per_minute: 1000001", "requests_per_minute: Input should be less than or equal to 1000000"),
    ],
)
def test_numbers_are_finite_and_bounded(tmp_path, fields, expected):
    path = _catalog(tmp_path, f"name: odd, usd_per_mtok_in: 1, usd_per_mtok_out: 2, {fields}")
    assert _only(_problems(path)).startswith(f"entry 'odd' (#1): {expected}")


def test_the_bounds_themselves_are_accepted(tmp_path):
    path = _catalog(
        tmp_path,
        "name: big, usd_per_mtok_in: 10000, usd_per_mtok_out: 0, max_concurrency: 4096, "
        "requests_per_minute: 1000000, timeout_connect_s: 60, timeout_first_byte_s: 600, timeout_total_s: 3600",
    )
    assert wh.load_catalog(path, KEYED).filter(name="big")["usd_per_mtok_in"].item() == 10_000.0


# ---- masking and collecting ---------------------------------------------------------------------------------
def test_values_that_may_be_secrets_are_masked(tmp_path):
    path = _catalog(
        tmp_path,
        _entry("pasted", f"api_key: {SECRET}"),  # a key pasted under a field that does not exist
        _entry("in-env", f"api_key_env: sk_live_{SECRET.replace('-', '_')}"),  # a key as the name
    )
    problems = _problems(path)
    assert problems[0] == (
        "entry 'pasted' (#1): api_key: Extra inputs are not permitted, got <hidden str of 23 characters>"
    )
    assert problems[1].startswith("entry 'in-env' (#2): api_key_env: <hidden str of 31 characters> is not an allowed")
    assert not any(SECRET in p or SECRET.replace("-", "_") in p for p in problems), problems


def test_every_problem_is_collected_in_one_error_with_the_right_index(tmp_path):
    path = _catalog(
        tmp_path,
        "name: inf, usd_per_mtok_in: .inf, usd_per_mtok_out: 1",
        "name: pg, usd_per_mtok_in: 1, usd_per_mtok_out: 1, api_key_env: DAGSTER_PG_PASSWORD",
        f"name: ok, usd_per_mtok_in: 1, usd_per_mtok_out: 1, base_url: 'http://u:{SECRET}@h/v1'",
    )
    problems = _problems(path)
    assert [p.split(":")[0] for p in problems] == [
        "entry 'inf' (#1)",
        "entry 'pg' (#2)",
        "entry 'ok' (#3)",
        "entry 'ok' (#3)",
    ], problems
    assert problems[-1] == "entry 'ok' (#3): name: duplicate name"  # its own index, not its place among valid ones


def test_a_csv_with_50_bad_rows_is_one_short_line_showing_names_and_numbers_not_secrets(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "w.duckdb"))
    rows = "".join(f"vendor/model-{i:02d}-instruct,{0.15 * i:.2f},{SECRET}\n" for i in range(50))
    path = tmp_path / "llms.csv"
    path.write_text("model,usd_per_mtok_input,api_key\n" + rows)  # "model" for "name", a misspelt price, a key
    assert main(["sync-catalog", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and len(err) <= 300, (len(err), err)
    assert "'vendor/model-00-instruct'" in err and "... and 198 more" in err
    assert SECRET not in err
    with pytest.raises(wh.CatalogError) as info:
        wh.load_catalog(path)
    problems = info.value.problems
    assert len(problems) == 200  # every problem is kept, for code that wants them all
    assert "entry '?' (#7): model: Extra inputs are not permitted, got 'vendor/model-07-instruct'" in problems
    assert "entry '?' (#7): usd_per_mtok_input: Extra inputs are not permitted, got 1.05" in problems
    assert "entry '?' (#7): api_key: Extra inputs are not permitted, got <hidden str of 23 characters>" in problems


@pytest.mark.parametrize(
    ("field", "value", "hidden"),
    [
        ("notes", "cheap and cheerful", False),
        ("family", "meta-llama/Llama-3.1-8B-Instruct", False),
        ("released", "claude-3-5-sonnet-20241022", False),
        ("price_in", 0.15, False),
        ("token", 123456, True),  # a field named for a secret
        ("notes", "sk-proj-abc", True),  # a key's prefix
        ("notes", "Zk39vQ0pLw8rT2mN7xY4", True),  # random letters and digits
        ("notes", "https://u:p@h/v1", True),
        ("nested", {"a": 1}, True),
    ],
)
def test_an_unknown_field_shows_its_value_unless_it_could_be_a_secret(field, value, hidden):
    from warehouse.catalog import _shown

    assert _shown(field, value).startswith("<hidden") == hidden
