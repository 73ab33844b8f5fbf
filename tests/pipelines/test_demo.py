"""The demo's whole story on the fixture dataset: v1 on the initial pool, v2 after the sensor onboards more;
run again (as `make demo` twice: a new process), it reuses the warehouse and tells the same story."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from pipelines import demo

ROW = r"^(\d+)\s+(champion|challenger)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\w{12})"


def test_demo_registers_two_versions_with_one_cluster_map_and_again(tmp_path, monkeypatch, capsys, mmlu_like_dir):
    monkeypatch.setenv("UNIROUTE_DATA_HOME", str(tmp_path))
    for name in ("DAGSTER_HOME", "UNIROUTE_WAREHOUSE", "UNIROUTE_CATALOG"):  # restored after the test
        monkeypatch.setenv(name, "unset")
    args = ["--data", str(mmlu_like_dir), "--full", "--initial", "4", "--added", "2"]
    assert demo.main(args) == 0
    first = capsys.readouterr().out
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "UNIROUTE_WAREHOUSE", "UNIROUTE_CATALOG")}
    again = subprocess.run(
        [sys.executable, "-m", "pipelines.demo", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    tables = [re.findall(ROW, out, re.MULTILINE) for out in (first, again.stdout)]
    for rows in tables:
        assert [r[0] for r in rows] == ["1", "2"]
        assert rows[0][5] == rows[1][5]  # the new LLMs did not retrain the cluster map
        assert int(rows[1][2]) > int(rows[0][2])  # the pool grew
    assert tables[0] == tables[1]  # same data, same map, same routers
    assert "dagster dev" in first and "mlflow ui" in first
