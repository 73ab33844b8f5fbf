"""The profiling commands' errors as a user meets them: one line on stderr and exit code 2 for anything that is
the input's fault (a missing file, a bad catalog, a locked warehouse, a bad option), one line and exit code 1 for
a bug, and the traceback only with --debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

import profiling.cli
import replay.cli
import serving.cli
import warehouse as wh
from profiling.results import ResultsError
from replay import FaultKind
from serving.cli import main
from serving.processes import venv_env

BAD_CATALOG = """llms:
  - {name: a, base_url: 'http://127.0.0.1:9/v1', usd_per_mtok_in: -1, usd_per_mtok_out: .inf}
  - {name: b, base_url: 'http://127.0.0.1:9/v1', usd_per_mtok_in: 1, usd_per_mtok_out: 1, max_concurrency: 1e8}
"""


@pytest.fixture
def warehouse(tmp_path, monkeypatch):
    path = tmp_path / "w.duckdb"
    monkeypatch.setenv("UNIROUTE_WAREHOUSE", str(path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return path


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"uniroute {command}: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_fault_kinds_in_help_are_the_replay_servers():
    """--help lists them without importing the server; --fault itself is checked against the enum."""
    assert tuple(kind.value for kind in FaultKind) == replay.cli.FAULT_KINDS


def test_a_bad_catalog_is_one_short_line_naming_the_first_problems(warehouse, tmp_path, capsys):
    path = tmp_path / "llms.yaml"
    path.write_text(BAD_CATALOG)
    assert main(["sync-catalog", str(path)]) == 2
    err = one_line_error(capsys, "sync-catalog")
    assert str(path) in err and "usd_per_mtok_in" in err and len(err) <= 300  # issue 22: ~300 characters at most
    assert err.rstrip().endswith(" more")  # "... and N more": the rest are in the exception
    with wh.connect(warehouse) as con:
        assert wh.read_llms(con).height == 0
    with pytest.raises(wh.CatalogError) as info:  # --debug: the exception itself, traceback and all
        main(["--debug", "sync-catalog", str(path)])
    problems = " ".join(info.value.problems)
    assert all(field in problems for field in ("usd_per_mtok_in", "usd_per_mtok_out", "1e8"))


@pytest.mark.parametrize("error", [wh.WarehouseInputError("llms", "name", "x", "bad"), ResultsError("f.csv: bad")])
def test_errors_of_moved_modules_are_still_the_users(error):
    """Issue 24 moved the modules defining them: the CLI must still find them (one line, exit code 2, not 1)."""
    assert serving.cli._is_user_error(error)


@pytest.mark.parametrize("catalog", [BAD_CATALOG, "llms: [\n", None], ids=["invalid", "not-yaml", "missing"])
def test_a_catalog_that_fails_leaves_no_warehouse_behind(warehouse, tmp_path, capsys, catalog):
    """Issue 24: the catalog is checked before the warehouse is opened, so a first sync that fails creates neither
    an empty warehouse file nor its directory."""
    path = tmp_path / "llms.yaml"
    if catalog is not None:
        path.write_text(catalog)
    home = tmp_path / "home"
    assert main(["sync-catalog", str(path), "--warehouse", str(home / "w.duckdb")]) == 2
    assert str(path) in one_line_error(capsys, "sync-catalog")
    assert not home.exists() and not warehouse.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["sync-catalog", "{tmp}/absent.yaml"],
        ["import-prompts", "{tmp}/absent.jsonl", "--dataset", "d"],
        ["import-results", "{tmp}/absent.csv", "--dataset", "d"],
        ["import-mmlu-pro", "--data", "{tmp}/absent"],
        ["replay-server", "--data", "{tmp}/absent"],
    ],
)
def test_a_missing_file_is_one_line_naming_it(warehouse, tmp_path, capsys, argv):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert main(argv) == 2
    assert str(tmp_path / "absent") in one_line_error(capsys, argv[0])


def test_replay_server_option_errors_are_one_line(mmlu_like_dir, capsys):
    assert main(["replay-server", "--data", str(mmlu_like_dir), "--fault-rate", "0.5", "--fault", "hang=0.9"]) == 2
    assert "sum to" in one_line_error(capsys, "replay-server")
    assert main(["replay-server", "--data", str(mmlu_like_dir), "--model-latency", "gpt-17=5"]) == 2
    assert "gpt-17" in one_line_error(capsys, "replay-server")


def test_a_warehouse_locked_by_another_process_is_one_line(tmp_path, capsys):
    path = tmp_path / "w.duckdb"
    hold = f"import duckdb, sys; con = duckdb.connect({str(path)!r}); print(1, flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "1"  # it holds the lock now
        assert main(["datasets", "--warehouse", str(path)]) == 2
        assert str(path) in one_line_error(capsys, "datasets")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_bug_is_one_line_with_exit_1_unless_debug(monkeypatch, capsys):
    def broken(args):
        raise KeyError("grader_version")

    monkeypatch.setattr(profiling.cli, "_graders", broken)
    assert main(["graders"]) == 1
    err = one_line_error(capsys, "graders")
    assert "KeyError" in err and "grader_version" in err and "--debug" in err
    with pytest.raises(KeyError):
        main(["graders", "--debug"])


def test_user_errors_exit_2_in_a_real_process(tmp_path):
    command = [sys.executable, "-m", "serving.cli", "sync-catalog", str(tmp_path / "absent.yaml")]
    command += ["--warehouse", str(tmp_path / "w.duckdb")]
    done = subprocess.run(command, capture_output=True, text=True, env=venv_env(), timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    expected = f"uniroute sync-catalog: invalid LLM catalog {tmp_path / 'absent.yaml'}: file not found"
    assert done.stderr.strip().splitlines() == [expected]
