"""A real DuckDB file: migrations, idempotent writes, and bad frames that change nothing."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import warehouse as wh
from warehouse.schema import MIGRATIONS


@pytest.fixture
def con(tmp_path):
    con = wh.connect(tmp_path / "w.duckdb")
    yield con
    con.close()


def _prompts(n: int = 3, split: str = "validation") -> pl.DataFrame:
    ids = [f"ds/{i}" for i in range(n)]
    return pl.DataFrame(
        {
            "prompt_id": ids,
            "dataset": "ds",
            "split": split,
            "text": [f"question {i}" for i in range(n)],
            "prompt": [f"Q: question {i}" for i in range(n)],
            "reference": "A",
            "grader": "mmlu_pro_letter",
            "content_hash": [f"h{i}" for i in range(n)],
        }
    )


def _responses(model: str, ids: list[str], text: str = "the answer is (A)") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "model": model,
            "prompt_id": ids,
            "response": text,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "latency_ms": 12.5,
            "cost_usd": 1e-6,
            "prompt_hash": "x",
            "run_id": "run-1",
        }
    )


def test_migrations_apply_once_and_reopen_keeps_data(tmp_path):
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        assert wh.schema_version(con) == len(MIGRATIONS)
        wh.upsert_prompts(con, _prompts())
    with wh.connect(path) as con:
        assert wh.schema_version(con) == len(MIGRATIONS)
        assert wh.read_prompts(con).height == 3


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "w.duckdb"
    with wh.connect(path) as con:
        con.execute("INSERT INTO schema_migrations VALUES (999, now())").fetchall()
    with pytest.raises(wh.SchemaError, match="999"):
        wh.connect(path)


def test_responses_are_insert_only_and_pending_pairs_shrink(con):
    wh.upsert_prompts(con, _prompts(3))
    wh.upsert_llms(con, pl.concat([_llm("m1", "m1"), _llm("m2", "m2")]))
    assert wh.pending_pairs(con, ["m1", "m2"]).height == 6
    assert wh.insert_responses(con, _responses("m1", ["ds/0", "ds/1"])) == 2
    assert wh.insert_responses(con, _responses("m1", ["ds/1", "ds/2"], text="changed")) == 1  # ds/1 kept
    stored = wh.read_responses(con, ["m1"])
    assert stored.height == 3
    assert stored.filter(pl.col("prompt_id") == "ds/1")["response"].item() == "the answer is (A)"
    assert wh.pending_pairs(con, ["m1", "m2"])["model"].to_list() == ["m2"] * 3


def test_failures_accumulate_and_clear_on_success(con):
    wh.upsert_prompts(con, _prompts(2))
    failure = pl.DataFrame(
        {"model": "m1", "prompt_id": "ds/0", "attempts": 3, "last_error_class": "HTTP 503", "run_id": "r1"}
    )
    wh.record_failures(con, failure)
    wh.record_failures(con, failure.with_columns(last_error_class=pl.lit("ReadTimeout")))
    row = wh.read_failures(con).row(0, named=True)
    assert row["attempts"] == 6 and row["last_error_class"] == "ReadTimeout"
    wh.insert_responses(con, _responses("m1", ["ds/0"]))
    assert wh.read_failures(con).height == 0


def test_bad_frames_name_the_field_and_change_nothing(con):
    wh.upsert_prompts(con, _prompts(2))
    before = wh.read_prompts(con)
    with pytest.raises(wh.WarehouseInputError, match=r"prompts\.split=.dev"):
        wh.upsert_prompts(con, _prompts(2, split="dev"))  # CHECK constraint
    with pytest.raises(wh.WarehouseInputError, match=r"prompts\.text"):
        wh.upsert_prompts(con, _prompts(2).drop("text"))
    with pytest.raises(wh.WarehouseInputError, match=r"grades\.score"):
        wh.upsert_grades(
            con,
            pl.DataFrame({"model": "m", "prompt_id": "ds/0", "score": ["high"], "grader": "g", "grader_version": "1"}),
        )
    with pytest.raises(wh.WarehouseInputError, match=r"grades\.score=1\.5"):
        wh.upsert_grades(
            con,
            pl.DataFrame(
                {"model": "m", "prompt_id": ["ds/0", "ds/1"], "score": [1.0, 1.5], "grader": "g", "grader_version": "1"}
            ),
        )
    with pytest.raises(wh.WarehouseInputError, match="duplicate key"):
        wh.insert_responses(con, _responses("m1", ["ds/0", "ds/0"]))
    assert wh.read_prompts(con).equals(before)
    assert wh.read_grades(con).height == 0 and wh.read_responses(con).height == 0


def test_grades_become_router_outcomes(con):
    wh.upsert_prompts(con, pl.concat([_prompts(2), _prompts(4, split="train").tail(2)]))
    grades = pl.DataFrame(
        {
            "model": "m",
            "prompt_id": ["ds/0", "ds/1", "ds/3"],
            "score": [1.0, 0.0, 0.5],
            "grader": "g",
            "grader_version": "1",
        }
    )
    assert wh.upsert_grades(con, grades) == 3
    assert wh.upsert_grades(con, grades.with_columns(score=pl.lit(1.0), grader_version=pl.lit("2"))) == 3
    outcomes = wh.read_outcomes(con, splits=["validation"])
    assert outcomes.columns == ["model", "prompt_id", "score"]
    assert outcomes["score"].to_list() == [1.0, 1.0]


def test_catalog_upsert_keeps_added_at(con):
    llm = pl.DataFrame(
        {
            "name": "m",
            "base_url": "http://127.0.0.1:1/v1",
            "model_id": "m",
            "usd_per_mtok_in": 1.0,
            "usd_per_mtok_out": 2.0,
            "max_concurrency": 4,
            "active": True,
        }
    )
    wh.upsert_llms(con, llm)
    first = wh.read_llms(con)["added_at"].item()
    wh.upsert_llms(con, llm.with_columns(usd_per_mtok_out=pl.lit(3.0)))
    row = wh.read_llms(con).row(0, named=True)
    assert row["usd_per_mtok_out"] == 3.0 and row["added_at"] == first


def test_embeddings_round_trip(con):
    vectors = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    assert wh.upsert_embeddings(con, "emb-1", ["a", "b", "c"], vectors) == 3
    assert wh.upsert_embeddings(con, "emb-1", ["a"], vectors[:1] + 1) == 0
    got = wh.read_embeddings(con, "emb-1", ["a", "c", "zz"])
    assert sorted(got) == ["a", "c"] and np.array_equal(got["a"], vectors[0])
    assert wh.read_embeddings(con, "emb-2", ["a"]) == {}


def _llm(name: str, model_id: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "name": [name],
            "base_url": ["http://127.0.0.1:9/v1"],
            "model_id": [model_id],
            "usd_per_mtok_in": [1.0],
            "usd_per_mtok_out": [1.0],
            "max_concurrency": [4],
            "active": [True],
        }
    )


def _grades(model: str, ids: list[str], score: float) -> pl.DataFrame:
    return pl.DataFrame(
        {"model": model, "prompt_id": ids, "score": score, "grader": "mmlu_pro_letter", "grader_version": "1"}
    )


def test_a_new_model_id_archives_its_answers_and_grades_and_makes_them_pending(con):
    ids = ["ds/0", "ds/1", "ds/2"]
    wh.upsert_prompts(con, _prompts())
    wh.upsert_llms(con, pl.concat([_llm("m1", "v1"), _llm("m2", "m2")]))
    for model, model_id in (("m1", "v1"), ("m2", "m2")):
        answers = _responses(model, ids).with_columns(
            base_url=pl.lit("http://127.0.0.1:9/v1"), model_id=pl.lit(model_id)
        )
        wh.insert_responses(con, answers)
        wh.upsert_grades(con, _grades(model, ids, 1.0))
    assert wh.archive_responses(con, ["m1", "m2"]) == 0  # nothing changed: nothing moves
    assert wh.pending_counts(con).height == 0

    wh.upsert_llms(con, _llm("m1", "v2"))  # same name, a new model behind it
    assert wh.pending_counts(con).rows() == [("m1", 3)]  # the nightly schedule sees it as unanswered
    assert wh.archive_responses(con, ["m1", "m2"]) == 3
    assert wh.archive_responses(con, ["m1", "m2"]) == 0  # idempotent
    assert wh.read_responses(con)["model"].unique().to_list() == ["m2"]
    assert wh.pending_pairs(con, ["m1"])["prompt_id"].to_list() == ids
    assert wh.read_outcomes(con, ["m1"]).height == 0
    previous = wh.read_archived_outcomes(con, "m1", ["validation"])
    assert previous["prompt_id"].to_list() == ids and previous["score"].to_list() == [1.0] * 3
    archived = con.sql("SELECT reason, model_id FROM responses_archive").fetchall()
    assert archived == [("endpoint changed", "v1")] * 3


def test_refresh_before_archives_older_answers_once(con):
    from datetime import UTC, datetime, timedelta

    wh.upsert_prompts(con, _prompts())
    wh.upsert_llms(con, _llm("m1", "v1"))
    wh.insert_responses(con, _responses("m1", ["ds/0", "ds/1"]))  # no endpoint recorded: taken as current
    wh.upsert_grades(con, _grades("m1", ["ds/0", "ds/1"], 0.0))
    assert wh.archive_responses(con, ["m1"], datetime.now(UTC) - timedelta(hours=1)) == 0  # nothing that old
    cutoff = datetime.now(UTC)
    assert wh.archive_responses(con, ["m1"], cutoff) == 2
    wh.insert_responses(con, _responses("m1", ["ds/0", "ds/1"], text="asked again"))
    assert wh.archive_responses(con, ["m1"], cutoff) == 0  # a re-run with the same cutoff asks nothing twice
    assert wh.read_responses(con)["response"].to_list() == ["asked again"] * 2
    assert con.sql("SELECT count(*) FROM grades_archive").fetchall() == [(2,)]
    assert wh.read_archived_outcomes(con, "m2", ["validation"]).height == 0


def test_migration_4_records_the_catalog_endpoint_of_existing_answers(tmp_path):
    import duckdb

    path = tmp_path / "w.duckdb"
    raw = duckdb.connect(str(path))
    raw.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)")
    for version, sql in enumerate(MIGRATIONS[:3], start=1):
        raw.execute(sql).fetchall()
        raw.execute("INSERT INTO schema_migrations VALUES (?, now())", [version]).fetchall()
    raw.execute(
        "INSERT INTO llms VALUES ('m1', 'http://h/v1', 'v1', NULL, 1, 1, 4, NULL, now(), true);"
        "INSERT INTO responses VALUES ('m1', 'p', 'A', NULL, 1, 1, 1, 0, 'x', now(), 'run')"
    ).fetchall()
    raw.close()
    with wh.connect(path) as con:
        assert wh.schema_version(con) == len(MIGRATIONS)
        assert wh.read_responses(con).select("base_url", "model_id").rows() == [("http://h/v1", "v1")]


def test_a_stored_prompt_keeps_its_split_on_reimport(con):
    wh.upsert_prompts(con, _prompts(3, split="train"))
    wh.upsert_prompts(con, _prompts(3, split="test").with_columns(text=pl.lit("edited")))
    stored = wh.read_prompts(con)
    assert stored["split"].to_list() == ["train"] * 3  # splits never move
    assert stored["text"].to_list() == ["edited"] * 3  # everything else follows the new import
    assert wh.read_splits(con, ["ds/0", "ds/9"]) == {"ds/0": "train"}


def test_an_answer_to_an_older_request_is_stale_and_archived_once(con):
    prompts = _prompts(2).with_columns(request_hash=pl.lit("v2"))
    wh.upsert_prompts(con, prompts)
    wh.upsert_llms(con, _llm("m1", "m1"))
    old = _responses("m1", ["ds/0"]).with_columns(request_hash=pl.lit("v1"))
    wh.insert_responses(con, pl.concat([old, _responses("m1", ["ds/1"]).with_columns(request_hash=pl.lit("v2"))]))
    assert wh.pending_counts(con).rows() == [("m1", 1)]  # the answer to the old template counts as missing
    assert wh.pending_pairs(con, ["m1"]).height == 0  # ... until it is archived
    assert wh.archive_responses(con, ["m1"]) == 1
    assert wh.archive_responses(con, ["m1"]) == 0
    assert con.sql("SELECT prompt_id, reason FROM responses_archive").fetchall() == [("ds/0", "template changed")]
    assert wh.pending_pairs(con, ["m1"])["prompt_id"].to_list() == ["ds/0"]


def test_import_only_llms_and_results_only_datasets_are_never_pending(con):
    wh.upsert_prompts(
        con,
        pl.concat(
            [
                _prompts(2),
                _prompts(2).with_columns(prompt_id=pl.format("res/{}", pl.col("content_hash")), dataset=pl.lit("res")),
            ]
        ),
    )
    spec = {"spec": "{}", "template_version": "t", "source": None}
    wh.upsert_dataset(con, pl.DataFrame([{"name": "res", "collectable": False, **spec}]))
    imported_only = _llm("imp", "imp").with_columns(
        base_url=pl.lit(None, pl.String),
        usd_per_mtok_in=pl.lit(None, pl.Float64),
        usd_per_mtok_out=pl.lit(None, pl.Float64),
    )
    wh.upsert_llms(con, pl.concat([_llm("m1", "m1"), imported_only], how="vertical_relaxed"))
    assert wh.pending_pairs(con, ["m1", "imp"])["prompt_id"].to_list() == ["ds/0", "ds/1"]  # only m1, only ds
    assert wh.pending_counts(con).rows() == [("m1", 2)]
    imported = _responses("imp", ["res/h0", "res/h1"]).with_columns(
        response=pl.lit(None, pl.String), cost_usd=pl.Series([0.5, 1.5]), source=pl.lit("imported")
    )
    wh.insert_responses(con, imported)
    assert wh.expected_count(con, "imp") == 2  # the dataset it has answers in
    assert wh.expected_count(con, "m1") == 2  # what it can be asked
    assert wh.read_gradable(con).height == 0  # imported scores are kept, never regraded
    assert wh.archive_responses(con, ["imp"], collected_before=__import__("datetime").datetime(2100, 1, 1)) == 0
    costs = dict(wh.read_costs(con).select("model", "cost").iter_rows())
    assert costs == {"imp": 1.0}
    assert wh.read_query_costs(con, ["imp"], ["validation"])["cost"].to_list() == [0.5, 1.5]


def test_costs_fall_back_to_catalog_prices_times_tokens(con):
    wh.upsert_prompts(con, _prompts(2))
    wh.upsert_llms(con, _llm("m1", "m1").with_columns(usd_per_mtok_in=pl.lit(2.0), usd_per_mtok_out=pl.lit(4.0)))
    wh.insert_responses(con, _responses("m1", ["ds/0", "ds/1"]).with_columns(cost_usd=pl.Series([None, 1.0])))
    # ds/0: no measured cost -> 10 tokens in x $2/M + 5 out x $4/M
    assert wh.read_query_costs(con, ["m1"], ["validation"])["cost"].to_list() == [pytest.approx(4e-5), 1.0]


def test_costs_fall_back_to_a_price_per_query_and_each_llm_says_its_basis(con):
    wh.upsert_prompts(con, _prompts(4))
    ids = [f"ds/{i}" for i in range(4)]
    no_cost = {"cost_usd": pl.lit(None, pl.Float64)}
    no_tokens = {"prompt_tokens": pl.lit(None, pl.Int32), "completion_tokens": pl.lit(None, pl.Int32)}
    per_query = _llm("q", "q").with_columns(
        usd_per_mtok_in=pl.lit(None, pl.Float64), usd_per_mtok_out=pl.lit(None, pl.Float64), usd_per_query=0.25
    )
    both = _llm("both", "both").with_columns(usd_per_query=pl.lit(9.0))
    wh.upsert_llms(con, pl.concat([per_query, both, _llm("est", "est"), _llm("meas", "meas")], how="diagonal_relaxed"))
    wh.insert_responses(
        con,
        pl.concat(
            [
                _responses("q", ids).with_columns(**no_cost),  # tokens, but no per-token price: per query
                _responses("both", ids).with_columns(**no_cost),  # tokens x price wins over the price per query
                _responses("est", ids).with_columns(**no_cost, tokens_estimated=pl.Series([True, True, True, False])),
                _responses("meas", ids).with_columns(cost_usd=pl.Series([1.0, None, None, None]), **no_tokens),
            ],
            how="diagonal_relaxed",
        ),
    )
    costs = dict(wh.read_costs(con).select("model", "cost").iter_rows())
    assert costs["q"] == 0.25 and costs["both"] == pytest.approx(15e-6) and costs["meas"] == 1.0
    basis = wh.read_cost_basis(con, ["both", "est", "meas", "q", "unknown"])
    assert basis.rows() == [
        ("both", "catalog price x tokens"),
        ("est", "catalog price x estimated tokens"),  # 3 of its 4 answers
        ("meas", "measured"),  # the only priced answer: the others have neither cost nor tokens nor price per query
        ("q", "price per query"),
        ("unknown", None),
    ]
    assert wh.read_cost_basis(con, ["q"], splits=("test",)).rows() == [("q", None)]


def test_a_non_finite_price_or_cost_is_refused_by_the_writers(con):
    with pytest.raises(wh.WarehouseInputError, match=r"llms\.usd_per_query=-1\.0"):
        wh.upsert_llms(con, _llm("m1", "m1").with_columns(usd_per_query=pl.lit(-1.0)))
    for column in ("usd_per_mtok_in", "usd_per_mtok_out"):
        for bad in (float("inf"), float("nan")):
            with pytest.raises(wh.WarehouseInputError, match=rf"llms\.{column}=(inf|nan): must be finite"):
                wh.upsert_llms(con, _llm("m1", "m1").with_columns(pl.lit(bad).alias(column)))
    wh.upsert_prompts(con, _prompts(1))
    for bad in (float("inf"), float("nan")):
        with pytest.raises(wh.WarehouseInputError, match=r"responses\.cost_usd=(inf|nan): must be finite"):
            wh.insert_responses(con, _responses("m1", ["ds/0"]).with_columns(cost_usd=pl.lit(bad)))
    assert wh.read_responses(con).height == 0 and wh.read_llms(con).height == 0


def test_judge_verdicts_are_cached_once(con):
    frame = pl.DataFrame({"key": ["k1"], "judge": ["j@v"], "score": [0.7], "verdict": ["Score: 7"], "cost_usd": [1e-4]})
    assert wh.insert_judge_cache(con, frame) == 1
    assert wh.insert_judge_cache(con, frame.with_columns(score=pl.lit(0.1))) == 0
    assert wh.read_judge_cache(con, ["k1", "k2"])["score"].to_list() == [0.7]
    with pytest.raises(wh.WarehouseInputError, match=r"judge_cache\.score=2\.0"):
        wh.insert_judge_cache(con, frame.with_columns(key=pl.lit("k3"), score=pl.lit(2.0)))


def test_a_cluster_map_under_the_data_home_follows_a_copy_and_one_elsewhere_keeps_its_path(tmp_path):
    import shutil

    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere" / "map"

    def row(version: str, path) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "version": [version],
                "kind": ["kmeans"],
                "n_clusters": [3],
                "embedder_id": ["e"],
                "training_llms": [["a"]],
                "n_train_prompts": [3],
                "path": [str(path)],
            }
        )

    with wh.connect(home / "w.duckdb") as con:
        wh.register_cluster_map(con, row("v1", home / "artifacts" / "cluster_maps" / "v1"))
    shutil.copytree(home, tmp_path / "copy")
    shutil.rmtree(home)
    with wh.connect(tmp_path / "copy" / "w.duckdb") as con:
        assert wh.latest_cluster_map(con)["path"] == str(tmp_path / "copy" / "artifacts" / "cluster_maps" / "v1")
        wh.register_cluster_map(con, row("v2", elsewhere))
        assert wh.latest_cluster_map(con)["path"] == str(elsewhere)  # outside the data home: as given


def test_failing_checks_say_which_check_failed_and_its_message(con):
    failed = '{"check_graded_responses_score_range": {"message": "2 scores outside [0, 1]", "failures": []}}'
    wh.record_check(con, "a", "check_graded_responses_valid", False, failed)
    wh.record_check(con, "b", "check_llm_responses_valid", False, "not json")
    wh.record_check(con, "c", "check_llm_responses_valid", True, "{}")
    assert wh.read_failing_checks(con).rows() == [
        ("a", "check_graded_responses_score_range", "2 scores outside [0, 1]"),
        ("b", "check_llm_responses_valid", ""),  # an older record's details: its own name, no message
    ]
    assert wh.failing_llms(con) == ["a", "b"]
