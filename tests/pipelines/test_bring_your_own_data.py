"""A user's own data through the unchanged pipeline: a non-MMLU prompt file with mixed graders (exact match,
numeric, code run against tests, an LLM judge served by the replay endpoint) imported with the CLI, then
profiled, mapped and routed to a champion; and an evaluation table of results with per-query costs imported
instead of collected, onboarding a held-back LLM into v2 with the same cluster map."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

import warehouse as wh
from assets.profiling import imported_results, llm_catalog, llm_partitions
from assets.resources import CollectorResource
from assets.router import router
from assets.routing import llm_error_features
from pipelines.cli import main
from profiling.completion import catalog_completer
from profiling.graders import GradeItem, get_grader
from profiling.grading import grade_responses_report
from replay import ReplayData, ReplayServer

pytestmark = pytest.mark.e2e  # a whole pipeline or server, end to end

JUDGE = {"judge": "judge"}
#: category -> (grader, how many prompts); each LLM is right on its own categories, gamma on every third prompt
CATEGORIES = {"capitals": "exact_match", "arithmetic": "numeric", "code": "code", "essay": "llm_judge"}
SKILLS = {"alpha": {"capitals", "code"}, "beta": {"arithmetic", "essay"}, "gamma": set(), "delta": set(CATEGORIES)}
PER_CATEGORY = 16
CITIES = ["Paris", "Rome", "Madrid", "Berlin", "Lisbon", "Vienna", "Athens", "Dublin"]


def _prompt_rows() -> list[dict]:
    rows = []
    for category, grader in CATEGORIES.items():
        for i in range(PER_CATEGORY):
            row = {"prompt_id": f"{category}-{i}", "category": category, "grader": grader}
            if category == "capitals":
                row |= {"prompt": f"Which city is capital number {i} of the atlas?", "reference": CITIES[i % 8]}
            elif category == "arithmetic":
                row |= {"prompt": f"What is {i} times {i + 3}?", "reference": str(i * (i + 3))}
            elif category == "code":
                row |= {
                    "prompt": f"Write a Python function shift(x) that returns x plus {i}.",
                    "tests": f"assert shift(1) == {1 + i}\nassert shift(-5) == {i - 5}",
                }
            else:
                row |= {
                    "messages": [{"role": "user", "content": f"Write two sentences on the history of topic {i}."}],
                    "grader_options": JUDGE,
                }
            rows.append(row)
    return rows


def _answer(model: str, row: dict) -> str:
    right = row["category"] in SKILLS[model] or (model == "gamma" and int(row["prompt_id"].split("-")[1]) % 3 == 0)
    category, i = row["category"], int(row["prompt_id"].split("-")[1])
    if category == "capitals":
        return row["reference"] if right else "Lyon"
    if category == "arithmetic":
        return f"The product is {i * (i + 3) if right else i * (i + 3) + 1}."
    if category == "code":
        return f"```python\ndef shift(x):\n    return x + {i if right else i + 1}\n```"
    return f"Topic {i} began long ago. {'It shaped what followed.' if right else 'Bananas.'}"


@pytest.fixture(scope="module")
def byod_built(tmp_path_factory, data_home, build_graph):
    """Built once for the module, copied per test (``byod``): the prompt file imported through the CLI, a replay
    endpoint answering for four LLMs and a judge (up while the module runs), the catalog's partitions registered by
    ``uniroute sync-catalog``, then the unchanged graph on alpha, beta and gamma: router v1."""
    root = tmp_path_factory.mktemp("byod")
    warehouse = root / "data" / "warehouse.duckdb"
    prompts_file, spec = root / "prompts.jsonl", root / "spec.yaml"
    prompts_file.write_text("\n".join(json.dumps(r) for r in _prompt_rows()) + "\n")
    spec.write_text(
        "system_prompt: Answer briefly.\nmax_tokens: 256\nshares: {train: 0.5, validation: 0.25, test: 0.25}\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNIROUTE_WAREHOUSE", str(warehouse))
        assert main(["import-prompts", str(prompts_file), "--dataset", "byod", "--spec", str(spec)]) == 0
        with ReplayServer(_recorded_answers(warehouse)) as server:
            home = data_home(warehouse.parent, server.base_url, ("alpha", "beta", "gamma"))
            assert home.warehouse == warehouse
            home.init_dagster_home()
            for key, value in home.env().items():
                patch.setenv(key, value)
            _catalog(home.catalog, server.base_url, ["alpha", "beta", "gamma", "judge"])
            with home.instance() as instance:
                assert main(["sync-catalog", str(home.catalog)]) == 0  # registers the partitions: no sensor needed
                synced = set(instance.get_dynamic_partitions(llm_partitions.name))
                resources = _resources(home)
                build_graph(instance, resources, None, home.catalog, list(home.llms), prompts={"dataset": "byod"})
            yield {"home": home, "server": server, "synced_partitions": synced}


def _recorded_answers(warehouse) -> ReplayData:
    """Every LLM's answer to every imported prompt, and the judge's answers to its own rubric prompts: what a judge
    LLM would say about each essay."""
    with wh.connect(warehouse) as con:
        prompts = wh.read_prompts(con)
    rows = {f"byod/{r['prompt_id']}": r for r in _prompt_rows()}
    answers = [
        {"model": m, "prompt_id": pid, "response": _answer(m, rows[pid])}
        for m in SKILLS
        for pid in prompts["prompt_id"]
    ]
    grader = get_grader("llm_judge", JUDGE)
    judged = []
    for answer in answers:
        stored = prompts.filter(pl.col("prompt_id") == answer["prompt_id"]).row(0, named=True)
        if stored["grader"] == "llm_judge":
            text = grader.render(GradeItem(answer["response"], stored["reference"], stored["prompt"], None))
            verdict = "Score: 9" if "shaped" in answer["response"] else "Score: 2"
            judged.append({"prompt_id": f"judge/{len(judged)}", "prompt": text, "response": verdict})
    frames = pl.concat(
        [
            prompts.select("prompt_id", "messages", "prompt"),
            pl.DataFrame(judged).select("prompt_id", pl.lit(None, pl.String).alias("messages"), "prompt"),
        ]
    )
    recorded = pl.concat(
        [pl.DataFrame(answers), pl.DataFrame(judged).select(pl.lit("judge").alias("model"), "prompt_id", "response")]
    )
    return ReplayData.from_frames(frames, recorded)


@pytest.fixture
def byod(byod_built, tmp_path, monkeypatch):
    """This test's own copy of the module's data home (its Dagster instance open), and the module's replay endpoint."""
    home = byod_built["home"].copy(tmp_path / "data")
    for key, value in home.env().items():
        monkeypatch.setenv(key, value)
    with home.instance() as instance:
        yield {**byod_built, "home": home, "instance": instance}


def _catalog(path, base_url: str, names: list[str], imported: list[str] = ()) -> None:
    prices = {"alpha": 1.0, "beta": 1.0, "gamma": 0.1, "delta": 5.0, "judge": 0.5}
    lines = [f"defaults: {{base_url: '{base_url}'}}", "llms:"]
    lines += [f"  - {{name: {n}, usd_per_mtok_in: {prices[n]}, usd_per_mtok_out: {prices[n]}}}" for n in names]
    lines += [f"  - {{name: {n}, base_url: null}}" for n in imported]
    path.write_text("\n".join(lines) + "\n")


def _resources(home) -> dict:
    return home.resources(collector=CollectorResource(max_attempts=3, timeout_s=10.0))


def test_a_prompt_file_with_mixed_graders_runs_the_unchanged_pipeline_to_a_champion(byod):
    home, server, instance = byod["home"], byod["server"], byod["instance"]
    assert byod["synced_partitions"] == {"alpha", "beta", "gamma", "judge"}  # by sync-catalog, before the graph
    v1 = home.latest_metadata(instance, "router")
    assert (
        v1["version"] == "1" and v1["alias"] == "champion" and sorted(_names(v1["pool"])) == ["alpha", "beta", "gamma"]
    )
    assert v1["audc"] > v1["zero_audc"]  # category specialists: prompt-aware routing wins

    with wh.connect(home.warehouse) as con:
        grades = wh.read_grades(con).join(wh.read_prompts(con).select("prompt_id", "category"), on="prompt_id")
        by = {(m, c): s for m, c, s in grades.group_by("model", "category").agg(pl.col("score").mean()).iter_rows()}
        # every grader scored what the fixture made right or wrong, code by running it against its tests
        assert by["alpha", "code"] == 1.0 and by["beta", "code"] == 0.0 and by["alpha", "capitals"] == 1.0
        assert by["beta", "arithmetic"] == 1.0 and by["alpha", "arithmetic"] == 0.0
        assert by["beta", "essay"] == pytest.approx(0.9) and by["alpha", "essay"] == pytest.approx(0.2)
        essays = grades.filter(pl.col("grader") == "llm_judge")
        assert essays["judge"].str.starts_with("judge").all() and (essays["judge_cost_usd"] > 0).all()
        responses = wh.read_responses(con, ["alpha"])
        assert json.loads(responses["request_params"][0]) == {"max_tokens": 256, "temperature": 0.0}
        # regrading never pays a judge twice: its verdicts are cached
        judge_calls = server.request_log.frame().filter(pl.col("model") == "judge")["count"].sum()
        con.sql("DELETE FROM grades WHERE grader = 'llm_judge'")
        report = grade_responses_report(con, None, catalog_completer(con))
        assert report.written == essays.height and report.judge_cost_usd == 0
        assert server.request_log.frame().filter(pl.col("model") == "judge")["count"].sum() == judge_calls

        # one Psi: a validation grade that changed after the features were stored holds the router back
        validation = wh.read_outcomes(con, ["alpha"], ["validation"]).row(0, named=True)
        changed = {**validation, "score": 1 - validation["score"], "grader": "exact_match", "grader_version": "1"}
        wh.upsert_grades(con, pl.DataFrame([changed]))
    stale = dg.materialize([router], resources=_resources(home), instance=instance, raise_on_error=False)
    assert not stale.success
    assert "stored features of ['alpha'] differ" in str(stale.all_events)


def test_an_imported_results_table_onboards_a_held_back_llm_with_the_same_map(byod, tmp_path):
    home, server, instance = byod["home"], byod["server"], byod["instance"]
    catalog, resources = home.catalog, _resources(home)
    map_version = home.latest_metadata(instance, "cluster_map")["version"]  # v1's map, built on alpha, beta, gamma
    # delta is held back: its results arrive as a wide table (RouterBench's layout) with per-query USD costs
    with wh.connect(home.warehouse) as con:
        prompts = wh.read_prompts(con)
    ids = [p.split("/", 1)[1] for p in prompts["prompt_id"]]
    wide = pl.DataFrame(
        {
            "sample_id": ids,
            "prompt": prompts["prompt"],
            "delta": [1.0] * len(ids),
            "delta|total_cost": [0.002 + 0.001 * (i % 3) for i in range(len(ids))],
        }
    )
    wide.write_parquet(tmp_path / "routerbench.parquet")
    run_config = {
        "ops": {
            "imported_results": {
                "config": {"path": str(tmp_path / "routerbench.parquet"), "dataset": "byod", "catalog": str(catalog)}
            },
            "llm_catalog": {"config": {"path": str(catalog)}},
        }
    }
    result = dg.materialize(
        [llm_catalog, imported_results], resources=resources, instance=instance, run_config=run_config
    )
    assert result.success
    meta = {k: v.value for k, v in result.asset_materializations_for_node("imported_results")[0].metadata.items()}
    assert meta["added_to_catalog"] == ["delta"] and meta["with_per_query_cost"] == len(ids)
    assert meta["answers_stored"] == len(ids) and meta["already_stored_unchanged"] == 0
    only_import = {"ops": {"imported_results": run_config["ops"]["imported_results"]}}
    again = dg.materialize([imported_results], resources=resources, instance=instance, run_config=only_import)
    meta = {k: v.value for k, v in again.asset_materializations_for_node("imported_results")[0].metadata.items()}
    assert (meta["answers_stored"], meta["already_stored_unchanged"], meta["added_to_catalog"]) == (0, len(ids), [])
    assert "delta" in instance.get_dynamic_partitions(llm_partitions.name)
    assert "base_url: null" in catalog.read_text()
    asked = sum(server.request_log.totals().values())
    from assets.profiling import graded_responses, llm_responses

    for asset in (llm_responses, graded_responses, llm_error_features):
        assert dg.materialize([asset], partition_key="delta", resources=resources, instance=instance).success
    assert sum(server.request_log.totals().values()) == asked  # imported: nothing asked of any endpoint
    v2 = {
        k: v.value
        for k, v in dg.materialize([router], resources=resources, instance=instance)
        .asset_materializations_for_node("router")[0]
        .metadata.items()
    }
    assert "delta" in _names(v2["pool"]) and v2["cluster_map_version"] == map_version
    assert _names(v2["unseen_llms"]) == ["delta"]  # the map never saw delta: this is the unseen-LLM result
    with wh.connect(home.warehouse) as con:
        cost = dict(wh.read_costs(con).select("model", "cost").iter_rows())["delta"]
        assert wh.pending_counts(con).filter(pl.col("model") == "delta").height == 0
    val = [0.002 + 0.001 * (i % 3) for i, p in enumerate(prompts["prompt_id"]) if prompts["split"][i] == "validation"]
    assert cost == pytest.approx(sum(val) / len(val))  # its router cost: the measured USD per validation query


def _names(value) -> list[str]:
    """LLM names from the router's metadata: a list, or text joined by commas ("none" when empty)."""
    names = value if isinstance(value, list) else str(value).split(",")
    return [n.strip() for n in names if n.strip() and n.strip() != "none"]
