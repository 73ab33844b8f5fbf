"""`uniroute route`, `uniroute models`, `uniroute add-model` and `uniroute serve`'s checks as a user types them:
one-line errors with exit code 2 (tracebacks only with --debug), a sqlite registry never created by looking."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

import warehouse as wh
from pipelines.cli import main
from serving.processes import venv_env

CATALOG = """# our LLMs (this comment must survive add-model)
defaults: {base_url: 'http://127.0.0.1:9/v1'}
llms:
  - {name: cheap, usd_per_mtok_in: 0.1, usd_per_mtok_out: 0.1}
"""


def test_route_prints_the_choice_and_every_candidate(registry_uri, capsys, prices):
    assert (
        main(["route", "Compute the integral of 3x from 0 to 5.", "--cost-weight", "0", "--tracking-uri", registry_uri])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    chosen = lines[0].split("\t")[0]
    assert chosen in {"math-pro", "generalist"}
    starred = [line for line in lines[1:] if line.strip().startswith("*")]
    assert len(lines) == 1 + len(prices) and len(starred) == 1 and chosen in starred[0]
    assert main(["route", "anything", "--max-cost", "1000", "--tracking-uri", registry_uri]) == 0
    capsys.readouterr()
    assert main(["route", "anything", "--candidates", "gpt-99", "--tracking-uri", registry_uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uniroute route: ") and "gpt-99" in err and len(err.splitlines()) == 1


def _chosen_and_ranked(out: str) -> list[tuple[str, str, list[str]]]:
    """(chosen LLM, prompt shown, candidates listed) per routed prompt of `uniroute route`'s output."""
    routed = []
    for line in out.splitlines():
        if not line.startswith(" "):
            llm, _, prompt = line.split("\t")
            routed.append((llm, prompt, []))
        else:
            routed[-1][2].append(line.strip().removeprefix("*").split()[0])
    return routed


def test_route_candidates_never_swallow_the_prompt(registry_uri, capsys):
    uri = ["--tracking-uri", registry_uri]
    assert main(["route", "--candidates", "cheap,generalist", "What is 7 * 6?", *uri]) == 0
    [(llm, prompt, listed)] = _chosen_and_ranked(capsys.readouterr().out)
    assert prompt == "What is 7 * 6?" and sorted(listed) == ["cheap", "generalist"] and llm in listed
    assert main(["route", "Name a prime.", "--candidates", "cheap", "--candidates", "math-pro", *uri]) == 0
    [(_, prompt, listed)] = _chosen_and_ranked(capsys.readouterr().out)
    assert prompt == "Name a prime." and sorted(listed) == ["cheap", "math-pro"]

    # the old spelling: one prompt and two names were three words; now it is refused, naming the stray word
    with pytest.raises(SystemExit) as refused:
        main(["route", "--candidates", "cheap", "generalist", "What is 7 * 6?", *uri])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("uniroute route: unrecognized arguments: What is 7 * 6?") and "--candidates a,b" in err
    assert len(err.splitlines()) == 1


def test_route_takes_more_prompts_by_flag_and_one_from_stdin(registry_uri, capsys, monkeypatch):
    uri = ["--tracking-uri", registry_uri]
    assert main(["route", "first?", "--prompt", "second?", "--prompt", "third?", *uri]) == 0
    assert [prompt for _, prompt, _ in _chosen_and_ranked(capsys.readouterr().out)] == ["first?", "second?", "third?"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("A question\nover two lines?\n"))
    assert main(["route", "-", "--candidates", "cheap,math-pro", *uri]) == 0
    [(_, prompt, listed)] = _chosen_and_ranked(capsys.readouterr().out)
    assert prompt == "A question over two lines?" and sorted(listed) == ["cheap", "math-pro"]
    assert main(["route", *uri]) == 2
    assert "no prompt" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--max-cost", "-1"], "-1"),
        (["--min-accuracy", "1.5"], "1.5"),
        (["--model-uri", "models:/uniroute@nope"], "nope"),
        (["--model-uri", "models:/elsewhere@champion"], "elsewhere"),
        # refused by the parser (argparse's SystemExit(2)), before anything is loaded
        (["--max-cost", "nan"], "'nan'"),
        (["--cost-weight", "inf"], "'inf'"),
        (["--min-accuracy", "most"], "'most'"),
        (["--max-cost", "0.001", "--min-accuracy", "0.5"], "not allowed with"),
        (["--candidates", ","], "comma-separated"),
    ],
)
def test_route_user_errors_are_one_line_and_exit_2(registry_uri, capsys, args, named):
    try:
        code = main(["route", "What is 2 + 2?", "--tracking-uri", registry_uri, *args])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("uniroute route") and named in err and len(err.splitlines()) == 1, err


def test_models_lists_the_pool_cheapest_first(registry_uri, capsys, prices):
    assert main(["models", "--tracking-uri", registry_uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "error rate" in lines[0] and "validation error" in lines[1]
    rows = lines[2:]
    assert [row.split()[0] for row in rows] == sorted(prices, key=prices.get)
    assert all(0 <= float(row.split()[2]) <= 1 for row in rows)


def _register_uneven_clusters(root, onnx_cache) -> str:
    """A router over two LLMs and two clusters holding 90 and 10 of its 100 validation prompts: ``specialist`` is
    wrong on 10% of the big cluster and 90% of the small one (18% of all prompts, mean Psi 0.5), ``steady`` on
    30% of each (30%, mean Psi 0.3). Registered in a new sqlite registry under ``root``; returns its URI."""
    import mlflow
    import numpy as np

    from router_core import Embedder, KMeansClusterMap, UniRouter, save_router
    from serving import registry

    rng = np.random.default_rng(0)
    topic = np.array([0] * 90 + [1] * 10)
    x = np.eye(8)[topic] + 0.01 * rng.normal(size=(100, 8))
    wrong = {"specialist": (0.1, 0.9), "steady": (0.3, 0.3)}
    errors = np.zeros((100, 2))
    for j, rates in enumerate(wrong.values()):
        for t, rate in enumerate(rates):
            rows = np.flatnonzero(topic == t)
            errors[rows[: round(rate * len(rows))], j] = 1.0
    router = UniRouter(KMeansClusterMap(n_clusters=2).fit(x)).fit_arrays(x, errors, list(wrong), [1.0, 1.0])
    router_dir = save_router(router, root / "router")
    registry.write_router_meta(router_dir, Embedder(cache_dir=onnx_cache), 0.0, router.predict_error(x), 1 - errors)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry.configure(uri)
    try:
        experiment = registry.ensure_experiment("uniroute", root / "artifacts")
        version = registry.register_router(router_dir, "uniroute", experiment, {}, {}, {}, {}, ["What is 2 + 2?"])
        registry.promote("uniroute", version, better=True)
    finally:
        mlflow.set_tracking_uri(None)
    return uri


def test_models_shows_validation_error_weighted_by_cluster_size(tmp_path, onnx_cache, capsys):
    """The unweighted mean of Psi ranks the specialist (18% wrong) below the steady LLM (30% wrong)."""
    uri = _register_uneven_clusters(tmp_path, onnx_cache)
    assert main(["models", "--tracking-uri", uri]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert float(rows["specialist"][2]) == pytest.approx(0.18) and float(rows["steady"][2]) == pytest.approx(0.3)
    assert rows["specialist"][3:] == ["0", "(0.10)", "1", "(0.90)"]  # best and worst cluster: Psi as it is


def _registry_commands(uri: str, catalog) -> list[list[str]]:
    """Every command that reads the registry, pointed at ``uri`` (None: the default)."""
    flag = ["--tracking-uri", uri] if uri else []
    return [
        ["models", *flag],
        ["route", "What is 2 + 2?", *flag],
        ["serve", "--catalog", str(catalog), "--port", "9", *flag],
    ]


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "llms.yaml"
    path.write_text(CATALOG)
    return path


@pytest.mark.parametrize("where", ["missing_dir", "missing_file", "empty_file", "not_sqlite", "other_sqlite"])
def test_a_missing_or_foreign_registry_is_an_error_naming_it_and_stays_as_it_was(tmp_path, capsys, catalog, where):
    import sqlite3

    path = tmp_path / ("nope/mlflow.db" if where == "missing_dir" else "mlflow.db")
    if where == "empty_file":
        path.touch()
    elif where == "not_sqlite":
        path.write_text("moved elsewhere\n")
    elif where == "other_sqlite":
        with sqlite3.connect(path) as con:
            con.execute("CREATE TABLE t (x)")
    before = path.read_bytes() if path.exists() else None
    for argv in _registry_commands(f"sqlite:///{path}", catalog):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"uniroute {argv[0]}: ") and str(path) in err and len(err.splitlines()) == 1, err
        assert (path.read_bytes() if path.exists() else None) == before  # not created, not migrated
    assert not (tmp_path / "nope").exists()


def test_the_default_registry_missing_is_an_error_naming_its_path(tmp_path, capsys, monkeypatch, catalog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(tmp_path / "home" / "warehouse.duckdb"))
    for argv in _registry_commands(None, catalog):
        assert main(argv) == 2, argv
        assert str(tmp_path / "home" / "mlflow" / "mlflow.db") in capsys.readouterr().err
    assert not (tmp_path / "home").exists()


def test_serve_refuses_a_bad_catalog_or_model_uri_in_one_line(registry_uri, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "llms:\n  - {name: a, base_url: 'http://127.0.0.1:9/v1', usd_per_mtok_in: .inf, usd_per_mtok_out: 1}\n"
    )
    serve = ["serve", "--port", "9", "--tracking-uri", registry_uri]
    for args, named in [
        (["--catalog", str(bad)], "usd_per_mtok_in"),
        (["--catalog", str(tmp_path / "absent.yaml")], "absent.yaml"),
        (["--catalog", str(bad), "--workers", "0"], "--workers 0"),
        (["--catalog", str(bad), "--model-uri", "uniroute"], "models:/<name>@<alias>"),
    ]:
        assert main([*serve, *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("uniroute serve: ") and named in err and len(err.splitlines()) == 1, err


def _uniroute(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``uniroute ARGV`` as its own process, as a user runs it."""
    command = [sys.executable, "-m", "pipelines.cli", *argv]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=venv_env(), timeout=300)


def test_a_user_error_is_one_line_and_exit_2_in_a_real_process_and_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "moved" / "mlflow.db"
    done = _uniroute("models", "--tracking-uri", f"sqlite:///{missing}")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"uniroute models: MLflow registry {missing}: no such file")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    for debug in (["--debug", "models"], ["models", "--debug"]):
        done = _uniroute(*debug, "--tracking-uri", f"sqlite:///{missing}")
        assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
        assert done.stderr.rstrip().splitlines()[-1].startswith("serving.cli.CommandError: MLflow registry")
    assert not missing.parent.exists()

    done = _uniroute("route", "x", "--max-cost", "cheap")  # argparse's own errors: one line too, exit 2
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "uniroute route: argument --max-cost: expected a finite number, got 'cheap' (see uniroute route --help)"
    ]


#: Modules that take seconds to import: `--help` must need none of them.
HEAVY = {
    "mlflow", "dagster", "torch", "sentence_transformers", "onnxruntime", "polars", "pandas", "numpy", "scipy",
    "sklearn", "pyarrow", "duckdb", "uvicorn", "starlette", "httpx", "router_core", "warehouse",
}  # fmt: skip

COMMANDS = [
    "replay-server", "sync-catalog", "import-prompts", "import-mmlu-pro", "import-results", "datasets", "graders",
    "collect", "grade", "route", "models", "add-model", "serve", "mlflow", "refresh",
]  # fmt: skip

HELP_EVERYWHERE = f"""
import contextlib, io, json, sys
from pipelines.cli import build_parser
for argv in [["--help"]] + [[name, "--help"] for name in {COMMANDS!r}]:
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
        build_parser().parse_args(argv)
    assert "usage: uniroute" in out.getvalue(), argv
print(json.dumps(sorted(sys.modules)))
"""


def test_an_unknown_alias_is_one_line_and_exit_2_in_a_real_process(registry_uri):
    done = _uniroute("models", "--model-uri", "models:/uniroute@nope", "--tracking-uri", registry_uri)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("uniroute models: models:/uniroute@nope: ") and registry_uri in line


#: What `uniroute route` and `uniroute models` may not import: they read the version's files (no MLflow, seconds)
#: and embed with its int8 ONNX export (no torch).
NOT_FOR_ROUTING = {
    "mlflow", "dagster", "torch", "sentence_transformers", "transformers", "pandas", "scipy", "sklearn",
    "sqlalchemy", "uvicorn", "starlette", "httpx", "matplotlib",
}  # fmt: skip

#: ``uniroute`` in a fresh process: its exit code, what it printed, and every module it loaded.
UNIROUTE_MODULES = """
import contextlib, io, json, sys
from pipelines.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue(), "modules": sorted(sys.modules)}))
"""


@pytest.mark.parametrize("argv", [["models"], ["route", "What is 2 + 2?", "--max-cost", "2"]])
def test_route_and_models_load_only_what_they_need(registry_uri, tmp_path, monkeypatch, argv):
    """A fresh process as the user's, on the default registry of a data home (a copy: re-rooted on the way):
    modules, not seconds, so a busy machine cannot make this flaky (benchmarks/cli_latency.py times them)."""
    import shutil

    from serving.registry_files import sqlite_path

    home = tmp_path / "home"
    shutil.copytree(sqlite_path(registry_uri).parent, home / "mlflow")
    env = venv_env(UNIROUTE_WAREHOUSE=str(home / "warehouse.duckdb"))
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-c", UNIROUTE_MODULES, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["code"] == 0, result["err"][-2000:]
    assert {name.split(".")[0] for name in result["modules"]} & NOT_FOR_ROUTING == set()
    assert "math-pro" in result["out"] and "cheap" in result["out"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--workers", "0"], "--workers 0: expected at least 1"),
        (["--canary-fraction", "2"], "--canary-fraction 2.0: expected a number in [0, 1]"),
        (["--model-uri", "uniroute"], "--model-uri: "),
        (["--catalog", "missing.yaml"], "no catalog at missing.yaml"),
    ],
)
def test_serve_refuses_bad_arguments_before_loading_mlflow_or_the_gateway(tmp_path, argv, says):
    """Argument errors come first: no MLflow, uvicorn or gateway import (seconds) before the one line."""
    done = subprocess.run(
        [sys.executable, "-c", UNIROUTE_MODULES, "serve", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    result = json.loads(done.stdout)
    assert result["code"] == 2 and result["err"].startswith(f"uniroute serve: {says}"), result["err"]
    loaded = set(result["modules"])
    assert {name.split(".")[0] for name in loaded} & {"mlflow", "uvicorn", "torch"} == set()
    assert not loaded & {"serving.registry", "serving.gateway"}


def test_help_imports_nothing_heavy():
    """`uniroute --help` (and every command's) in well under a second: modules, not seconds, so a busy machine
    cannot make this flaky."""
    done = subprocess.run([sys.executable, "-c", HELP_EVERYWHERE], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    assert {name.split(".")[0] for name in loaded} & HEAVY == set()
    assert not loaded & {"serving.registry", "serving.gateway", "replay.app", "profiling.collector"}
    assert "serving.cli" in loaded and "profiling.cli" in loaded
    help_text = _uniroute("--help")
    assert help_text.returncode == 0 and "route" in help_text.stdout and "--debug" in help_text.stdout


def test_add_model_appends_validates_and_keeps_the_file_on_error(tmp_path, capsys):
    path = tmp_path / "llms.yaml"
    path.write_text(CATALOG)
    new = ["add-model", "gpt-x", "--catalog", str(path), "--base-url", "https://api.example.com/v1"]
    assert main([*new, "--usd-per-mtok-in", "0.15", "--usd-per-mtok-out", "0.6", "--model-id", "gpt-4o-mini"]) == 0
    text = path.read_text()
    assert text.startswith("# our LLMs") and wh.load_catalog(path)["name"].to_list() == ["cheap", "gpt-x"]
    assert wh.load_catalog(path).filter(name="gpt-x")["model_id"].item() == "gpt-4o-mini"

    assert main([*new, "--usd-per-mtok-in", "0.15", "--usd-per-mtok-out", "0.6"]) == 2  # the same name again
    assert (
        main(
            [
                "add-model",
                "neg",
                "--catalog",
                str(path),
                "--base-url",
                "https://a.b/v1",
                "--usd-per-mtok-in",
                "-1",
                "--usd-per-mtok-out",
                "1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "'gpt-x'" in err and "duplicate name" in err and "usd_per_mtok_in" in err
    assert [line.split(":")[0] for line in err.splitlines()] == ["uniroute add-model"] * 2  # one line each
    assert path.read_text() == text  # a refused entry leaves the catalog as it was
    assert not list(tmp_path.glob(".new-*"))


@pytest.mark.parametrize(
    ("name", "price", "problem"),
    [
        ("../../x", "1", "name: '../../x' is not a valid LLM name: has a path separator '/'"),
        ("x\x1b]0;owned\x07", "1", "name: 'x\\x1b]0;owned\\x07' is not a valid LLM name: has a control character"),
        ("uniroute", "1", "name: 'uniroute' is not a valid LLM name: reserved"),
        ("ok", "nan", "usd_per_mtok_in: Input should be a finite number"),
        ("ok", "inf", "usd_per_mtok_in: Input should be a finite number"),
        ("ok", "1e400", "usd_per_mtok_in: Input should be a finite number"),
    ],
)
def test_add_model_refuses_a_bad_name_or_number_in_one_line(tmp_path, capsys, name, price, problem):
    path = tmp_path / "llms.yaml"
    path.write_text(CATALOG)
    argv = ["add-model", name, "--catalog", str(path), "--base-url", "https://a.b/v1", "--usd-per-mtok-in", price]
    assert main([*argv, "--usd-per-mtok-out", "1"]) == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1 and "\x1b" not in err and "\x07" not in err
    assert path.read_text() == CATALOG and not list(tmp_path.glob(".new-*"))


def test_add_model_to_a_csv_catalog(tmp_path):
    path = tmp_path / "llms.csv"
    path.write_text("name,base_url,usd_per_mtok_in,usd_per_mtok_out\ncheap,http://127.0.0.1:9/v1,0.1,0.1\n")
    args = ["add-model", "b", "--catalog", str(path), "--base-url", "http://127.0.0.1:9/v1"]
    assert main([*args, "--usd-per-mtok-in", "1", "--usd-per-mtok-out", "2"]) == 0
    assert wh.load_catalog(path)["name"].to_list() == ["cheap", "b"]


def test_add_model_takes_a_price_per_query_and_needs_one_form(tmp_path, capsys):
    path = tmp_path / "llms.yaml"
    path.write_text(CATALOG)
    args = ["add-model", "per-query", "--catalog", str(path), "--base-url", "https://api.example.com/v1"]
    assert main([*args, "--usd-per-query", "0.004"]) == 0
    assert wh.load_catalog(path).filter(name="per-query")["usd_per_query"].item() == 0.004
    assert "# our LLMs" in path.read_text()
    capsys.readouterr()
    assert main(["add-model", "free", "--catalog", str(path), "--base-url", "https://api.example.com/v1"]) == 2
    err = capsys.readouterr().err
    assert "usd_per_mtok_in: Field required with a base_url" in err and "usd_per_query" in err
    assert main([*args[:1], "inf", *args[2:], "--usd-per-query", "inf"]) == 2
    assert "usd_per_query: Input should be a finite number" in capsys.readouterr().err


def test_every_error_line_is_short_even_for_a_long_path(tmp_path, capsys):
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 12)
    assert main(["import-results", str(deep / "results.csv"), "--dataset", "d"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniroute import-results: ") and "\n" not in err and len(err) <= 310, len(err)
