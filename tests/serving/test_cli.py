"""`uniroute route`, `uniroute models` and `uniroute add-model` as a user types them."""

from __future__ import annotations

import pytest

import warehouse as wh
from serving.cli import main

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
    with pytest.raises(SystemExit, match="candidates"):
        main(["route", "anything", "--candidates", "gpt-99", "--tracking-uri", registry_uri])


def test_models_lists_the_pool_cheapest_first(registry_uri, capsys, prices):
    assert main(["models", "--tracking-uri", registry_uri]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split()[0] for row in rows] == sorted(prices, key=prices.get)


def test_a_missing_registry_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="uniroute@champion"):
        main(["models", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}"])


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
    assert path.read_text() == text  # a refused entry leaves the catalog as it was
    assert not list(tmp_path.glob(".new-*"))


def test_add_model_to_a_csv_catalog(tmp_path):
    path = tmp_path / "llms.csv"
    path.write_text("name,base_url,usd_per_mtok_in,usd_per_mtok_out\ncheap,http://127.0.0.1:9/v1,0.1,0.1\n")
    args = ["add-model", "b", "--catalog", str(path), "--base-url", "http://127.0.0.1:9/v1"]
    assert main([*args, "--usd-per-mtok-in", "1", "--usd-per-mtok-out", "2"]) == 0
    assert wh.load_catalog(path)["name"].to_list() == ["cheap", "b"]
