"""Real materialisations: the profiling slice of the graph on the fixture dataset, a replay server and DuckDB."""

from __future__ import annotations

import re

import dagster as dg
import polars as pl

import warehouse as wh
from assets.profiling import graded_responses, llm_catalog, llm_partitions, llm_responses, prompt_set
from assets.resources import CollectorResource, WarehouseResource
from pipelines.definitions import defs
from replay import FaultRates, ReplayConfig, ReplayServer


def test_definitions_load():
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"llm_catalog", "prompt_set", "llm_responses", "graded_responses"} <= keys
    sensors = {s.name: s.default_status for s in defs.get_repository_def().sensor_defs}
    # onboarding, automation, coverage drift (which adds nothing without sampled traffic and a judge), rollout
    # (which moves nothing on fewer than its minimum of requests) and drift confirmed (which regrades what a paid
    # re-check replaced, paying nothing) run as soon as a daemon does; nothing else evaluates automation conditions
    assert sensors == {
        "llm_onboarding_sensor": dg.DefaultSensorStatus.RUNNING,
        "uniroute_automation_sensor": dg.DefaultSensorStatus.RUNNING,
        "coverage_drift_sensor": dg.DefaultSensorStatus.RUNNING,
        "uniroute_rollout_sensor": dg.DefaultSensorStatus.RUNNING,
        "drift_confirmed_sensor": dg.DefaultSensorStatus.RUNNING,
    }
    # re-checking a suspected drift pays for answers: its schedule waits for someone to turn it on
    schedule = defs.resolve_schedule_def("daily_drift_recheck_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED and schedule.job_name == "drift_recheck"


def _catalog_and_prompts(instance, tmp_path, mmlu_like_dir, server, resources, models: list[str]) -> None:
    """The catalog of ``models`` behind ``server`` and the fixture's prompts, materialised; a partition per LLM."""
    catalog = tmp_path / "llms.yaml"
    entries = ", ".join(f"{{name: {m}}}" for m in models)
    catalog.write_text(
        f"defaults: {{base_url: '{server.base_url}', usd_per_mtok_in: 1, usd_per_mtok_out: 1}}\nllms: [{entries}]\n"
    )
    config = {
        "llm_catalog": {"config": {"path": str(catalog)}},
        "prompt_set": {"config": {"path": str(mmlu_like_dir)}},
    }
    assert dg.materialize(
        [llm_catalog, prompt_set], resources=resources, instance=instance, run_config={"ops": config}
    ).success
    instance.add_dynamic_partitions(llm_partitions.name, models)


def test_profiling_materialises_per_llm_partition(instance, tmp_path, mmlu_like_dir):
    resources = {
        "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "collector": CollectorResource(max_attempts=3, timeout_s=5.0),
    }
    with ReplayServer(mmlu_like_dir) as server:
        _catalog_and_prompts(instance, tmp_path, mmlu_like_dir, server, resources, ["cheap", "math-pro"])
        for model in ("cheap", "math-pro"):
            result = dg.materialize(
                [llm_responses, graded_responses],
                partition_key=model,
                resources=resources,
                instance=instance,
                selection=[llm_responses, graded_responses],
            )
            assert result.success
            stored = result.asset_materializations_for_node("llm_responses")[0].metadata["stored"].value
            assert stored == 12 + 36  # validation and test prompts
        asked = sum(server.request_log.totals().values())
        again = dg.materialize(
            [llm_responses, graded_responses], partition_key="cheap", resources=resources, instance=instance
        )
        assert sum(server.request_log.totals().values()) == asked  # nothing asked twice
    meta = {
        node: again.asset_materializations_for_node(node)[0].metadata for node in ("llm_responses", "graded_responses")
    }
    assert meta["llm_responses"]["stored"].value == 0 and meta["graded_responses"]["graded_now"].value == 0
    assert (
        meta["llm_responses"]["dagster/row_count"].value == 48
        and meta["graded_responses"]["validation_coverage"].value == 1
    )
    with wh.connect(tmp_path / "w.duckdb") as con:
        outcomes = wh.read_outcomes(con, splits=["validation"])
        assert wh.count_answers(con, "cheap") == {"responses": 48, "grades": 48}  # no duplicated rows
    assert outcomes.group_by("model").len().sort("model")["len"].to_list() == [12, 12]
    event = instance.get_latest_materialization_event(dg.AssetKey("graded_responses"))
    assert event is not None and event.dagster_event.partition in {"cheap", "math-pro"}


def test_a_profiling_run_merges_what_a_killed_run_staged_and_never_asks_it_again(instance, tmp_path, mmlu_like_dir):
    """A run killed while asking leaves durable staged files and no warehouse rows; the next run of the partition
    plans around them (asks only the rest) and merges both runs' answers, each pair once."""
    from profiling.collector import RetryPolicy, active_llms
    from profiling.staging import collect_to_staging, plan_collection, staged_files

    warehouse = WarehouseResource(path=str(tmp_path / "w.duckdb"))
    resources = {"warehouse": warehouse, "collector": CollectorResource(max_attempts=3, timeout_s=5.0)}
    with ReplayServer(mmlu_like_dir) as server:
        _catalog_and_prompts(instance, tmp_path, mmlu_like_dir, server, resources, ["cheap"])
        with wh.connect(warehouse.database()) as con:  # the killed run: planned, then staged 20 answers
            pairs = plan_collection(con, ["cheap"], ["validation", "test"], warehouse.staging())
            llms = active_llms(con, ["cheap"])
        killed = pairs.head(20)
        collect_to_staging(killed, llms, warehouse.staging(), policy=RetryPolicy(timeout_s=5.0), progress=False)
        assert len(staged_files(warehouse.staging())) >= 1
        server.request_log.reset()

        result = dg.materialize([llm_responses], partition_key="cheap", resources=resources, instance=instance)
        assert result.success
        asked = server.request_log.frame()
    meta = result.asset_materializations_for_node("llm_responses")[0].metadata
    assert set(asked["prompt_id"]).isdisjoint(killed["prompt_id"])  # the staged answers were not asked again
    assert asked["count"].sum() == pairs.height - 20 and meta["requested"].value == pairs.height - 20
    assert meta["stored"].value == pairs.height == 48 and meta["staged_files_merged"].value >= 2  # both runs'
    assert staged_files(warehouse.staging()) == []  # merged, moved aside
    with wh.connect(warehouse.database()) as con:
        assert wh.count_answers(con, "cheap")["responses"] == 48


def test_the_staging_location_is_the_warehouse_resources(instance, tmp_path, mmlu_like_dir):
    """Beside the warehouse by default; where ``staging_path`` says when set (e.g. storage every run mounts)."""
    elsewhere = tmp_path / "shared" / "staging"
    warehouse = WarehouseResource(path=str(tmp_path / "w.duckdb"), staging_path=str(elsewhere))
    assert WarehouseResource(path=str(tmp_path / "w.duckdb")).staging() == tmp_path / "w.duckdb.staging"
    resources = {"warehouse": warehouse, "collector": CollectorResource(max_attempts=3, timeout_s=5.0)}
    with ReplayServer(mmlu_like_dir) as server:
        _catalog_and_prompts(instance, tmp_path, mmlu_like_dir, server, resources, ["math-pro"])
        result = dg.materialize([llm_responses], partition_key="math-pro", resources=resources, instance=instance)
    assert result.success
    merged = list((elsewhere / "merged" / "model=math-pro").glob("*.parquet"))
    assert merged and sum(pl.read_parquet(f).height for f in merged) == 48  # every answer went through there
    assert not (tmp_path / "w.duckdb.staging").exists()


def test_profiling_stages_on_an_s3_url_and_no_secret_reaches_dagster_or_duckdb(
    instance, tmp_path, mmlu_like_dir, s3_bucket
):
    """``staging_path`` may be ``s3://bucket/prefix``: the run stages there, merges, and moves the objects aside;
    credentials only ever come from the environment, and a URL carrying them fails the run without repeating them."""
    url = s3_bucket.url("uniroute/staging")
    warehouse = WarehouseResource(path=str(tmp_path / "w.duckdb"), staging_path=url)
    assert warehouse.staging() == url
    resources = {"warehouse": warehouse, "collector": CollectorResource(max_attempts=3, timeout_s=5.0, batch_size=8)}
    with ReplayServer(mmlu_like_dir) as server:
        _catalog_and_prompts(instance, tmp_path, mmlu_like_dir, server, resources, ["math-pro"])
        result = dg.materialize([llm_responses], partition_key="math-pro", resources=resources, instance=instance)
        assert result.success
        leaked = {
            **resources,
            "warehouse": WarehouseResource(
                path=str(tmp_path / "w.duckdb"),
                staging_path=url.replace("s3://", f"s3://{s3_bucket.access_key}:{s3_bucket.secret}@"),
            ),
        }
        refused = dg.materialize(
            [llm_responses], partition_key="math-pro", resources=leaked, instance=instance, raise_on_error=False
        )
    meta = result.asset_materializations_for_node("llm_responses")[0].metadata
    assert meta["stored"].value == 48 and meta["staged_files_merged"].value >= 6
    keys = s3_bucket.list_keys()
    assert keys and all(k.startswith("uniroute/staging/merged/model=math-pro/") for k in keys)  # merged, moved aside
    assert not (tmp_path / "w.duckdb.staging").exists()
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure).step_failure_data.error
    assert "user info" in failure.to_string() and s3_bucket.secret not in failure.to_string()
    events = repr([instance.all_logs(run) for run in (result.run_id, refused.run_id)])
    assert s3_bucket.name in events  # the refusal is logged, naming the location
    assert s3_bucket.secret not in events and s3_bucket.access_key not in events
    with wh.connect(tmp_path / "w.duckdb") as con:
        assert wh.count_answers(con, "math-pro")["responses"] == 48
        tables = [t for (t,) in con.sql("SELECT table_name FROM information_schema.tables").fetchall()]
        stored = repr([con.sql(f'SELECT * FROM "{t}"').fetchall() for t in tables])
        secrets = con.sql("SELECT count(*) FROM duckdb_secrets()").fetchall()[0][0]
    assert s3_bucket.secret not in stored and s3_bucket.access_key not in stored and secrets == 0


def test_prompt_embeddings_embed_each_text_once(instance, tmp_path, mmlu_like_dir):
    from assets.embeddings import prompt_embeddings
    from assets.resources import EmbedderResource

    resources = {"warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")), "embedder": EmbedderResource()}
    run_config = {"ops": {"prompt_set": {"config": {"path": str(mmlu_like_dir)}}}}
    first = dg.materialize(
        [prompt_set, prompt_embeddings], resources=resources, instance=instance, run_config=run_config
    )
    again = dg.materialize([prompt_embeddings], resources=resources, instance=instance)
    meta = [r.asset_materializations_for_node("prompt_embeddings")[0].metadata for r in (first, again)]
    assert meta[0]["embedded_now"].value == meta[0]["vectors"].value == 120
    assert meta[1]["embedded_now"].value == 0 and meta[1]["vectors"].value == 120


def test_cluster_map_then_features_and_a_new_llm_needs_no_retraining(instance, tmp_path, mmlu_like_dir):
    from assets.embeddings import prompt_embeddings
    from assets.resources import ArtifactsResource, EmbedderResource
    from assets.routing import cluster_map, llm_error_features

    resources = {
        "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "collector": CollectorResource(max_attempts=3, timeout_s=5.0),
        "embedder": EmbedderResource(),
        "artifacts": ArtifactsResource(root=str(tmp_path / "artifacts")),
    }
    catalog = tmp_path / "llms.yaml"
    map_config = {
        "cluster_map": {"config": {"kind": "learned", "n_clusters": 3, "training_llms": ["cheap", "bio-pro"]}}
    }
    with ReplayServer(mmlu_like_dir) as server:
        catalog.write_text(
            f"defaults: {{base_url: '{server.base_url}', usd_per_mtok_in: 1, usd_per_mtok_out: 1}}\n"
            "llms: [{name: cheap}, {name: bio-pro}, {name: history-pro}]\n"
        )
        setup = {
            "llm_catalog": {"config": {"path": str(catalog)}},
            "prompt_set": {"config": {"path": str(mmlu_like_dir)}},
        }
        assert dg.materialize(
            [llm_catalog, prompt_set, prompt_embeddings],
            resources=resources,
            instance=instance,
            run_config={"ops": setup},
        ).success
        instance.add_dynamic_partitions(llm_partitions.name, ["cheap", "bio-pro"])
        profile = {"llm_responses": {"config": {"splits": ["train", "validation"]}}}
        for model in ("cheap", "bio-pro"):
            assert dg.materialize(
                [llm_responses, graded_responses],
                partition_key=model,
                resources=resources,
                instance=instance,
                run_config={"ops": profile},
            ).success
        first = dg.materialize([cluster_map], resources=resources, instance=instance, run_config={"ops": map_config})
        version = first.asset_materializations_for_node("cluster_map")[0].metadata["version"].value
        for model in ("cheap", "bio-pro"):
            assert dg.materialize(
                [llm_error_features], partition_key=model, resources=resources, instance=instance
            ).success
        # A new LLM: profiled on validation only, its features computed with the same map; the map is not refit.
        instance.add_dynamic_partitions(llm_partitions.name, ["history-pro"])
        for asset in (llm_responses, graded_responses, llm_error_features):
            assert dg.materialize([asset], partition_key="history-pro", resources=resources, instance=instance).success
        again = dg.materialize([cluster_map], resources=resources, instance=instance, run_config={"ops": map_config})
    assert again.success and again.asset_materializations_for_node("cluster_map") == []  # nothing refit
    with wh.connect(tmp_path / "w.duckdb") as con:
        features = wh.read_llm_features(con, version)
        assert wh.latest_cluster_map(con)["version"] == version
        assert wh.latest_cluster_map(con)["training_llms"] == ["cheap", "bio-pro"]
    assert features["model"].to_list() == ["bio-pro", "cheap", "history-pro"]
    psi = dict(zip(features["model"], features["psi"].to_list(), strict=True))
    assert len(psi["history-pro"]) == 3 and all(0 <= v <= 1 for v in psi["history-pro"])
    assert psi["bio-pro"] != psi["history-pro"]  # different specialists, different features


CHECKS_QUERY = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks {
    name blocking executionForLatestMaterialization { status }
    partitionStatuses { ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions } }
  } } } } }
}
"""


def test_each_property_is_a_check_of_its_llm_and_a_failed_coverage_blocks_and_shows(instance, tmp_path, mmlu_like_dir):
    from dagster_graphql.test.utils import execute_dagster_graphql

    from pipelines.ticks import daemon_workspace

    resources = {
        "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "collector": CollectorResource(max_attempts=1, timeout_s=5.0),
    }
    catalog = tmp_path / "llms.yaml"
    flaky = ReplayConfig(faults=FaultRates(unavailable=0.5), seed=0)  # one attempt each: about half fail
    with ReplayServer(mmlu_like_dir, flaky) as flaky_server, ReplayServer(mmlu_like_dir) as server:
        catalog.write_text(
            f"defaults: {{base_url: '{server.base_url}', usd_per_mtok_in: 1, usd_per_mtok_out: 1}}\n"
            f"llms: [{{name: last, base_url: '{flaky_server.base_url}'}}, {{name: cheap}}]\n"
        )
        setup = {
            "llm_catalog": {"config": {"path": str(catalog)}},
            "prompt_set": {"config": {"path": str(mmlu_like_dir)}},
        }
        assert dg.materialize(
            [llm_catalog, prompt_set], resources=resources, instance=instance, run_config={"ops": setup}
        ).success
        instance.add_dynamic_partitions(llm_partitions.name, ["last", "cheap"])
        # the failing LLM first, a passing one after it: the asset must not read "passed" for the latest
        failing, passing = (
            dg.materialize(
                [llm_responses, graded_responses],
                partition_key=model,
                resources=resources,
                instance=instance,
                raise_on_error=False,
            )
            for model in ("last", "cheap")
        )
    checks = {c.check_name: c for c in failing.get_asset_check_evaluations()}
    # one check per property, each about its LLM's partition; grading never ran, so no grade checks
    assert set(checks) == {
        f"check_llm_responses_{p}" for p in ("schema", "coverage", "empty_responses", "token_counts")
    }
    assert {c.partition for c in checks.values()} == {"last"}
    coverage = checks["check_llm_responses_coverage"]
    assert not coverage.passed and coverage.severity == dg.AssetCheckSeverity.ERROR and coverage.blocking
    assert re.fullmatch(r"last: coverage \d+% < 98% \(\d+ of 12 validation prompts\)", coverage.description)
    assert "expect_column_unique_value_count_to_be_between" in str(coverage.metadata["failed_expectations"].value)
    assert checks["check_llm_responses_schema"].passed and checks["check_llm_responses_schema"].blocking
    mild = [checks[f"check_llm_responses_{p}"] for p in ("empty_responses", "token_counts")]
    assert all(c.passed and c.severity == dg.AssetCheckSeverity.WARN and not c.blocking for c in mild)
    assert mild[0].description == "last: 0% empty responses <= 1% allowed (" + mild[0].description.split("(")[1]
    assert not failing.asset_materializations_for_node("graded_responses")  # blocked downstream

    passed = passing.get_asset_check_evaluations()
    assert len(passed) == 7 and all(c.passed and c.partition == "cheap" for c in passed)  # 4 on answers, 3 on grades
    assert {c.description for c in passed} >= {
        "cheap: coverage 100% >= 98% (12 of 12 validation prompts)",
        "cheap: every score present and in [0, 1]",
    }
    with wh.connect(tmp_path / "w.duckdb") as con:
        assert wh.failing_llms(con) == ["last"]
        [(model, check, message)] = wh.read_failing_checks(con).rows()  # what the router says it left out for
        assert (model, check) == ("last", "check_llm_responses_coverage")
        assert message == coverage.description.removeprefix("last: ")
        assert wh.read_grades(con).filter(pl.col("model") == "last").height == 0

    # what the asset's checks tab shows: the coverage check failed for "last", passed for "cheap"
    with daemon_workspace(instance) as workspace, workspace.create_request_context() as context:
        result = execute_dagster_graphql(context, CHECKS_QUERY, {"key": {"path": ["llm_responses"]}})
    shown = {c["name"]: c for c in result.data["assetNodeOrError"]["assetChecksOrError"]["checks"]}
    assert shown["check_llm_responses_coverage"]["partitionStatuses"] == {
        "succeededPartitions": ["cheap"],
        "failedPartitions": ["last"],
    }
    assert (
        shown["check_llm_responses_coverage"]["blocking"] and not shown["check_llm_responses_token_counts"]["blocking"]
    )


def test_a_runs_progress_lines_come_at_most_every_few_seconds():
    # every staged batch (0.5 s) reports progress; each line is an event in the run's log, so most are dropped
    from assets.profiling import _at_most_every

    clock = iter([100.0, 101.0, 104.9, 105.0, 105.1, 111.0])
    lines: list[str] = []
    log = _at_most_every(5.0, lines.append, clock=lambda: next(clock))
    for i in range(6):
        log(f"line {i}")
    assert lines == ["line 0", "line 3", "line 5"]
