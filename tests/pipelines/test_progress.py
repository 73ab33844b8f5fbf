"""What `uniroute refresh` and the demo say of a failed run: the step and what its op raised, in one line; and, when
nothing was launched, which asset of the router's chain failed last time (automation does not try it again)."""

from __future__ import annotations

import dagster as dg
import pytest

from pipelines.progress import ProgressLines, RunFailed, failure_reason
from pipelines.refresh import _failed_before


def _cluster_map(fails: bool) -> dg.AssetsDefinition:
    @dg.asset(name="cluster_map")
    def cluster_map() -> None:
        if fails:
            try:
                {}["k"]
            except KeyError as exc:  # the op's exception, with a cause of its own
                raise ValueError("n_clusters=16: exceeds the 12 training prompts\nsee the data") from exc

    return cluster_map


@dg.asset
def refused() -> None:
    raise dg.Failure("cluster_map.kind='x': expected one of ['kmeans', 'learned']")


def test_a_failed_run_is_named_with_what_its_op_raised(tmp_path):
    with dg.DagsterInstance.ephemeral() as instance:
        wrapped = dg.materialize([_cluster_map(fails=True)], instance=instance, raise_on_error=False)
        failure = dg.materialize([refused], instance=instance, raise_on_error=False)
    assert failure_reason(wrapped.all_events) == (
        "cluster_map: ValueError: n_clusters=16: exceeds the 12 training prompts see the data"
    )
    assert failure_reason(failure.all_events) == "refused: cluster_map.kind='x': expected one of ['kmeans', 'learned']"
    assert failure_reason(wrapped.all_events, limit=20) == "cluster_map: ValueError: n_clu..."  # the message cut
    with pytest.raises(RunFailed, match=r"^automation: cluster_map: run \S+ failed: cluster_map: ValueError: n_clu"):
        ProgressLines(tmp_path).run("automation: cluster_map", wrapped, 1.0)


def test_nothing_launched_names_a_chain_asset_whose_last_run_failed_until_it_succeeds():
    with dg.DagsterInstance.ephemeral() as instance:
        assert _failed_before(instance) == []
        run = dg.materialize([_cluster_map(fails=True)], instance=instance, raise_on_error=False)
        [line] = _failed_before(instance)
        assert line.startswith(f"refresh: cluster_map failed in run {run.run_id} (cluster_map: ValueError: n_clusters")
        assert "--select cluster_map, then uniroute refresh" in line
        assert dg.materialize([_cluster_map(fails=False)], instance=instance).success
        assert _failed_before(instance) == []


def test_in_process_ticks_leave_dagsters_current_instance_as_they_found_it(pipeline_snapshot, tmp_path):
    """A schedule or sensor context opens an instance of its own for ``context.instance``; left open, it stayed
    Dagster's current one, and once collected every later run in the process failed ("Attempted to resolve undefined
    DagsterInstance weakref": the demo, on a CI worker). The contexts are closed."""
    from dagster._core.storage.defs_state.base import DefsStateStorage

    from pipelines.definitions import defs
    from pipelines.progress import onboard, refine

    home = pipeline_snapshot.copy(tmp_path / "data")
    with pytest.MonkeyPatch.context() as patch, home.instance() as instance:
        for key, value in home.env().items():
            patch.setenv(key, value)
        current = DefsStateStorage.get()  # what the home's instance leaves there (tests/conftest.py: none)
        for tick in (refine, onboard):
            tick(defs, instance, home.resources(), lambda *run: None)
            assert DefsStateStorage.get() is current, tick.__name__
