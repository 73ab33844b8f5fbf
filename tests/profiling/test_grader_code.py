"""The code grader: passing and failing answers, and each limit really stopping the child."""

from __future__ import annotations

import socket
import time

import pytest

from profiling.graders import CodeGrader, GradeItem, extract_code, get_grader

ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0"


def grade_one(grader: CodeGrader, code: str, tests: str = "assert True"):
    (result,) = grader.grade_items([GradeItem(code, tests=tests)])
    return result


@pytest.fixture
def grader(tmp_path) -> CodeGrader:
    return get_grader("code", {"timeout_s": 2, "memory_mb": 256, "output_bytes": 10_000, "tmp_dir": str(tmp_path)})


def test_a_correct_solution_passes_and_a_wrong_one_fails(grader):
    correct = "Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nThat's it."
    assert grade_one(grader, correct, ADD_TESTS).score == 1.0
    wrong = grade_one(grader, "def add(a, b):\n    return a - b", ADD_TESTS)
    assert wrong.score == 0.0 and wrong.detail == "exit code 1: AssertionError"
    assert grade_one(grader, "def add(a, b) return", ADD_TESTS).detail.startswith("exit code 1: SyntaxError")


def test_exiting_before_the_tests_is_a_failure(grader):
    result = grade_one(grader, "import sys\nsys.exit(0)", "assert False")
    assert result.score == 0.0 and "before its tests ran" in result.detail
    assert grade_one(grader, "import os\nos._exit(0)", "assert False").score == 0.0


def test_humaneval_check_with_entry_point(tmp_path):
    grader = get_grader("code", {"entry_point": "inc", "tmp_dir": str(tmp_path)})
    tests = "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1) == 2\n"
    assert grade_one(grader, "def inc(x):\n    return x + 1", tests).score == 1.0
    assert grade_one(grader, "def inc(x):\n    return x", tests).score == 0.0


def test_an_infinite_loop_is_killed_at_the_wall_time_limit(grader):
    start = time.monotonic()
    result = grade_one(grader, "import time\nwhile True:\n    time.sleep(0.01)")
    elapsed = time.monotonic() - start
    assert result.score == 0.0 and result.detail == "timed out after 2 s"
    assert 1.9 <= elapsed < 4.0


def test_the_cpu_limit_kills_a_busy_loop_before_the_wall_limit(tmp_path):
    grader = get_grader("code", {"timeout_s": 10, "cpu_s": 1, "tmp_dir": str(tmp_path)})
    start = time.monotonic()
    result = grade_one(grader, "while True:\n    pass")
    assert result.score == 0.0 and result.detail.startswith("exit code -")  # killed by a signal (SIGXCPU)
    assert time.monotonic() - start < 5.0


def test_a_memory_bomb_fails_under_the_limit_and_runs_above_it(tmp_path):
    bomb = "block = bytearray(400 << 20)"
    small = get_grader("code", {"memory_mb": 256, "tmp_dir": str(tmp_path)})
    result = grade_one(small, bomb)
    assert result.score == 0.0 and result.detail == "exit code 1: MemoryError"
    assert grade_one(get_grader("code", {"memory_mb": 2048, "tmp_dir": str(tmp_path)}), bomb).score == 1.0


def test_an_output_flood_is_cut_and_killed(grader):
    start = time.monotonic()
    result = grade_one(grader, "while True:\n    print('x' * 1000)")
    assert result.score == 0.0 and result.detail == "output over 10000 bytes"
    assert time.monotonic() - start < 1.5  # well before the 2 s wall limit


def test_a_socket_connect_fails_inside_the_child(grader):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        server.settimeout(0.2)
        for module in ("socket", "_socket"):
            code = f"import {module}\ns = {module}.socket()\ns.connect(('127.0.0.1', {port}))"
            result = grade_one(grader, code)
            assert result.score == 0.0 and "network and process creation are disabled" in result.detail, module
        with pytest.raises(TimeoutError):
            server.accept()  # nothing ever connected


def test_the_child_gets_an_empty_environment_and_a_removed_temporary_directory(grader, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIROUTE_SECRET", "s3cret")
    code = (
        "import os\nopen('scratch.txt', 'w').write('x')\n"
        "assert set(os.environ) <= {'PATH', 'LC_CTYPE'}, sorted(os.environ)\n"
        "assert os.path.basename(os.getcwd()).startswith('uniroute-code-')"
    )
    assert grade_one(grader, code).score == 1.0
    grade_one(grader, "while True:\n    pass")  # a killed run cleans up too
    assert list(tmp_path.iterdir()) == []


def test_many_items_run_in_parallel_in_order(tmp_path):
    grader = get_grader("code", {"workers": 3, "tmp_dir": str(tmp_path)})
    sleepy = "import time\ntime.sleep(0.5)\n"
    items = [GradeItem(sleepy + f"v = {i}", tests=f"assert v == {i if i % 2 else -1}") for i in range(6)]
    start = time.monotonic()
    results = grader.grade_items(items)
    assert [r.score for r in results] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert time.monotonic() - start < 2.5  # 6 x 0.5 s one by one would be 3 s and more


def test_an_item_without_tests_is_not_graded(grader):
    (result,) = grader.grade_items([GradeItem("x = 1", tests=None)])
    assert result.score is None and "needs tests" in result.error


def test_extract_code_takes_the_last_python_block():
    text = "```python\nold()\n```\ntext\n```py\nnew()\n```\n```\nbare()\n```"
    assert extract_code(text) == "new()\n"
    assert extract_code("```\nbare()\n```") == "bare()\n"
    assert extract_code("plain = 1") == "plain = 1"
