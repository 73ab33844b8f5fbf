"""llm_judge: the request it sends, how verdicts become scores or recorded failures, and the verdict cache."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from profiling.graders import (
    DEFAULT_RUBRIC,
    GradeContext,
    GradeItem,
    InMemoryJudgeCache,
    get_grader,
    judge_cache_key,
)


@dataclass
class FakeCompletion:
    response: str
    cost_usd: float | None
    model_id: str


class FakeJudge:
    """``complete``: answers each request with ``verdicts[its response text]`` (a str, or None: a failed call)."""

    def __init__(self, verdicts: dict[str, str | None], cost: float = 0.01) -> None:
        self.verdicts, self.cost = verdicts, cost
        self.calls: list[tuple[str, list[dict]]] = []

    def __call__(self, judge: str, requests: list[dict]) -> list[FakeCompletion | None]:
        self.calls.append((judge, requests))
        out = []
        for request in requests:
            content = request["messages"][0]["content"]
            answer = next(text for key, text in self.verdicts.items() if f"Answer to grade:\n{key}\n" in content)
            out.append(None if answer is None else FakeCompletion(answer, self.cost, "judge-model-2025"))
        return out

    @property
    def n_requests(self) -> int:
        return sum(len(requests) for _, requests in self.calls)


VERDICTS = {
    "Paris": "Correct.\nScore: 10",
    "Lyon": "Wrong city.\nScore: 2",
    "Nice?": "Hmm. Score: 3\nOn reflection, **Score:** 4.5",  # the last score counts
    "ramble": "I cannot decide.",
    "too high": "Score: 12",
    "broken": None,
}


def items(*responses: str) -> list[GradeItem]:
    return [GradeItem(r, reference="Paris", prompt="Capital of France?") for r in responses]


def test_verdicts_become_scores_in_0_1_and_the_request_is_the_rendered_rubric():
    judge = FakeJudge(VERDICTS)
    grader = get_grader("llm_judge", {"judge": "gpt-judge"})
    results = grader.grade_items(items("Paris", "Lyon", "Nice?"), GradeContext(judge, InMemoryJudgeCache()))
    assert [r.score for r in results] == [1.0, 0.2, 0.45]
    assert {r.judge for r in results} == {"gpt-judge@judge-model-2025"}
    assert [r.judge_cost_usd for r in results] == [0.01] * 3 and not any(r.cached for r in results)
    ((name, requests),) = judge.calls
    assert name == "gpt-judge" and len(requests) == 3
    assert requests[0]["params"] == {"temperature": 0, "max_tokens": 512}
    content = requests[0]["messages"][0]["content"]
    assert requests[0]["messages"][0]["role"] == "user"
    assert "Capital of France?" in content and "Reference answer:\nParis" in content
    assert "from 0 (wrong) to 10 (fully correct)" in content


def test_unparseable_out_of_range_and_failed_verdicts_are_recorded_failures_not_zeros():
    judge = FakeJudge(VERDICTS)
    cache = InMemoryJudgeCache()
    grader = get_grader("llm_judge", {"judge": "j"})
    ramble, high, broken = grader.grade_items(items("ramble", "too high", "broken"), GradeContext(judge, cache))
    assert ramble.score is None and "verdict has no score" in ramble.error and ramble.judge_cost_usd == 0.01
    assert high.score is None and "outside [0, 10]" in high.error
    assert broken.score is None and broken.error == "judge 'j': call failed"
    assert cache.rows == {}  # failures are never cached: the next run asks again
    grader.grade_items(items("ramble"), GradeContext(judge, cache))
    assert judge.n_requests == 4


def test_cached_verdicts_are_never_paid_twice():
    judge, cache = FakeJudge(VERDICTS), InMemoryJudgeCache()
    grader = get_grader("llm_judge", {"judge": "j"})
    context = GradeContext(judge, cache, model_ids={"j": "judge-model-2025"})
    first = grader.grade_items(items("Paris", "Lyon"), context)
    again = grader.grade_items(items("Lyon", "Paris", "Nice?"), context)
    assert judge.n_requests == 3  # only "Nice?" was new
    assert [r.score for r in again] == [0.2, 1.0, 0.45]
    assert [r.cached for r in again] == [True, True, False]
    assert again[0].judge == first[1].judge and again[0].judge_cost_usd == 0.01  # what that verdict cost
    key = judge_cache_key("j", "judge-model-2025", grader.version, items("Paris")[0])
    assert cache.rows[key]["score"] == 1.0 and cache.rows[key]["verdict"] == VERDICTS["Paris"]


def test_the_same_item_twice_in_one_batch_is_asked_once():
    judge = FakeJudge(VERDICTS)
    results = get_grader("llm_judge", {"judge": "j"}).grade_items(items("Lyon", "Lyon"), GradeContext(judge))
    assert judge.n_requests == 1
    assert [r.score for r in results] == [0.2, 0.2] and [r.cached for r in results] == [False, True]


def test_a_new_rubric_or_judge_is_a_new_version_and_a_new_cache_key():
    base = get_grader("llm_judge", {"judge": "j"})
    rubric = DEFAULT_RUBRIC.replace("a few sentences", "one sentence")
    assert base.version == "1+judge='j'"
    other_rubric = get_grader("llm_judge", {"judge": "j", "rubric": rubric})
    assert other_rubric.version.startswith("1+judge='j'+rubric=sha256:") and len(other_rubric.version) < 60
    assert get_grader("llm_judge", {"judge": "k"}).version != base.version
    judge, cache = FakeJudge(VERDICTS), InMemoryJudgeCache()
    base.grade_items(items("Paris"), GradeContext(judge, cache))
    other_rubric.grade_items(items("Paris"), GradeContext(judge, cache))
    assert judge.n_requests == 2 and len(cache.rows) == 2


def test_custom_scale_pattern_and_placeholders():
    rubric = "Rate {response} against {reference} from 0 to {scale}. Reply RATING=<n>."
    grader = get_grader("llm_judge", {"judge": "j", "rubric": rubric, "scale": 1, "pattern": r"RATING=([0-9.]+)"})
    item = GradeItem("{reference} literally", reference=None)
    assert grader.render(item) == "Rate {reference} literally against (none) from 0 to 1. Reply RATING=<n>."
    assert grader.parse("RATING=0.25") == (0.25, None)
    assert grader.parse("RATING=2")[0] is None
    assert grader.parse("Score: 1")[0] is None  # the default pattern is replaced


def test_without_a_complete_function_the_judge_refuses_to_start():
    with pytest.raises(ValueError, match=r"context\.complete: grader 'llm_judge' needs a complete function"):
        get_grader("llm_judge", {"judge": "j"}).grade_items(items("Paris"))


def test_a_complete_function_returning_the_wrong_count_is_an_error():
    with pytest.raises(ValueError, match=r"complete: returned 0 completions for 1 requests to 'j'"):
        get_grader("llm_judge", {"judge": "j"}).grade_items(items("Paris"), GradeContext(lambda name, reqs: []))


def test_a_complete_function_that_raises_fails_the_items_not_the_batch():
    def complete(name, requests):
        raise ValueError(f"judge={name!r}: not in the catalog")

    results = get_grader("llm_judge", {"judge": "j"}).grade_items(items("Paris", "Lyon"), GradeContext(complete))
    assert [r.score for r in results] == [None, None]
    assert results[0].error == "judge 'j': ValueError: judge='j': not in the catalog"


def test_grade_raises_for_an_ungradable_verdict():
    grader = get_grader("llm_judge", {"judge": "j"})
    with pytest.raises(ValueError, match=r"context\.complete"):
        grader.grade("Paris", "Paris")
