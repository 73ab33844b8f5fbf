"""The demo's whole story on the fixture dataset: v1 on the initial pool, v2 after the sensor onboards more."""

from __future__ import annotations

import re

from pipelines import demo


def test_demo_registers_two_versions_with_one_cluster_map(tmp_path, monkeypatch, capsys, mmlu_like_dir):
    monkeypatch.setenv("UNIROUTE_DATA_HOME", str(tmp_path))
    for name in ("DAGSTER_HOME", "UNIROUTE_WAREHOUSE", "UNIROUTE_CATALOG"):  # restored after the test
        monkeypatch.setenv(name, "unset")
    assert demo.main(["--data", str(mmlu_like_dir), "--full", "--initial", "4", "--added", "2"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(\d+)\s+(champion|challenger)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\w{12})", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["1", "2"]
    assert rows[0][5] == rows[1][5]  # the new LLMs did not retrain the cluster map
    assert int(rows[1][2]) > int(rows[0][2])  # the pool grew
    assert "dagster dev" in out and "mlflow ui" in out
