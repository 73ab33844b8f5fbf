"""The judge's spend ledger on a real DuckDB file: reservations are a prefix within the day's cap, settled at what
a call cost (a failed one at its worst case); bad input is refused naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

import warehouse as wh

NOW = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)


def _calls(*worst: float) -> pl.DataFrame:
    return pl.DataFrame({"request_id": [f"r{i}" for i in range(len(worst))], "reserved_usd": list(worst)})


def test_reservations_stop_at_the_first_call_that_could_pass_the_cap(tmp_path):
    with wh.connect(tmp_path / "w.duckdb") as con:
        reserved = wh.reserve_judge_spend(con, "j", _calls(0.6, 0.5, 0.1), 1.0, NOW)
        assert reserved["request_id"].to_list() == ["r0"]  # r2 would fit, but judging stops at r1
        assert wh.judge_spend_on(con, NOW.date()) == 0.6
        (spend_id,) = reserved["spend_id"]
        settled = pl.DataFrame({"spend_id": [spend_id], "cost_usd": [0.1], "status": ["paid"]})
        assert wh.settle_judge_spend(con, settled) == 1
        assert wh.settle_judge_spend(con, settled) == 0  # settled once
        assert wh.judge_spend_on(con, NOW.date()) == pytest.approx(0.1)
        more = wh.reserve_judge_spend(con, "j", _calls(0.5, 0.4, 0.2), 1.0, NOW)
        assert more["request_id"].to_list() == ["r0", "r1"]
        failed = pl.DataFrame({"spend_id": more["spend_id"], "cost_usd": [None, None], "status": ["failed", "failed"]})
        wh.settle_judge_spend(con, failed)
        assert wh.judge_spend_on(con, NOW.date()) == pytest.approx(1.0)  # failed calls count at their worst case
        tomorrow = NOW + timedelta(hours=1)  # a new UTC day: the cap starts again
        assert wh.reserve_judge_spend(con, "j", _calls(0.9), 1.0, tomorrow).height == 1
        assert set(wh.read_judge_spend(con, tomorrow.date())["status"]) == {"reserved"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda con: wh.reserve_judge_spend(con, "j", _calls(0.1), float("nan")), "judge_spend.usd_per_day=nan"),
        (lambda con: wh.reserve_judge_spend(con, "j", _calls(0.1), -1.0), "judge_spend.usd_per_day=-1.0"),
        (lambda con: wh.reserve_judge_spend(con, "j", _calls(-0.1), 1.0), "judge_spend.reserved_usd=-0.1"),
        (
            lambda con: wh.settle_judge_spend(
                con, pl.DataFrame({"spend_id": ["x"], "cost_usd": [1.0], "status": ["ok"]})
            ),
            "judge_spend.status='ok': must be 'paid' or 'failed'",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_field(tmp_path, call, message):
    with wh.connect(tmp_path / "w.duckdb") as con:
        with pytest.raises(wh.WarehouseInputError, match=message.replace("(", r"\(").replace(".", r"\.")):
            call(con)
        assert wh.read_judge_spend(con).height == 0


def test_reservations_racing_on_one_warehouse_never_pass_the_cap_together(tmp_path):
    """Eight threads, each with its own connection to one file, reserve at once under one cap: together they hold
    at most the cap (a conflicting reservation fails or reserves nothing; none slips past the other)."""
    import threading

    path = tmp_path / "w.duckdb"
    with wh.connect(path):
        pass  # migrated once, before the race
    start, held, errors = threading.Barrier(8), [], []

    def reserve(n: int) -> None:
        with wh.connect(path) as con:
            start.wait()
            try:
                held.append(wh.reserve_judge_spend(con, "j", _calls(0.3, 0.3), 1.0, NOW).height * 0.3)
            except Exception as exc:  # a write conflict refuses a reservation; it never overspends
                errors.append(exc)

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with wh.connect(path) as con:
        assert wh.judge_spend_on(con, NOW.date()) <= 1.0 + 1e-9
    assert sum(held) <= 1.0 + 1e-9
