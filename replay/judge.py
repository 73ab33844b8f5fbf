"""The replay judge: a model that answers ``llm_judge``'s requests with the verdict the project's own grader gives.

The ``llm_judge`` grader (:mod:`profiling.graders._judge`) sends its rubric with ``{prompt}``, ``{reference}``,
``{response}`` and ``{scale}`` filled in. The replay judge reads them back out of the request's last user message
(the rubric turned into a pattern), finds the prompt among the data's by the hash of its text, as chat requests are
found (``{prompt}`` is the last user message asked, or the request's ``messages`` as JSON), grades the answer with
that prompt's grader, options, reference and tests, and answers ``Score: <score x scale>``: so judged scores equal
the project's grades. With ``noise`` > 0, that share of verdicts is flipped (score -> 1 - score), drawn from a hash
of the seed and the request (the same request, the same verdict).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass

from profiling.graders import DEFAULT_RUBRIC, GradeItem, Grader, get_grader
from replay.data import ReplayData, last_user_text
from router_core.embedding import prompt_hash

__all__ = ["DEFAULT_JUDGE_MODEL", "JudgeConfig", "JudgeRefusal", "ReplayJudge"]

DEFAULT_JUDGE_MODEL = "replay-judge"
_PLACEHOLDER = re.compile(r"\{(prompt|response|reference|scale)\}")
_GROUPS = {"prompt": r"(?P<prompt>.*?)", "response": r"(?P<response>.*?)", "reference": r"(?P<reference>.*?)"}
_GROUPS["scale"] = r"(?P<scale>[0-9.eE+-]+)"


@dataclass(frozen=True)
class JudgeConfig:
    """The replay judge: the model name it answers as, the rubric it reads, its noise rate and seed."""

    model: str = DEFAULT_JUDGE_MODEL
    #: The rubric of the ``llm_judge`` grader whose requests it answers (must contain ``{prompt}`` and
    #: ``{response}``); the scale is read from ``{scale}``, else ``scale``.
    rubric: str = DEFAULT_RUBRIC
    scale: float = 10.0
    #: Share of verdicts flipped (score -> 1 - score).
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError(f"judge.model: {self.model!r} is empty")
        for needed in ("{prompt}", "{response}"):
            if needed not in self.rubric:
                raise ValueError(f"judge.rubric: must contain {needed}, got {self.rubric!r:.80}")
        if not self.scale > 0:
            raise ValueError(f"judge.scale: {self.scale!r} is not positive")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"judge.noise: {self.noise!r} is not in [0, 1]")


class JudgeRefusal(Exception):
    """A judge request the replay judge cannot answer: its HTTP ``status`` and ``code`` (the recorded outcome)."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def rubric_pattern(rubric: str) -> re.Pattern[str]:
    """``rubric`` as a pattern whose groups read back what was filled in (a placeholder used twice must match
    the same text twice)."""
    parts, seen = [], set()
    for i, piece in enumerate(_PLACEHOLDER.split(rubric)):
        if i % 2 == 0:
            parts.append(re.escape(piece))
        else:
            parts.append(f"(?P={piece})" if piece in seen else _GROUPS[piece])
            seen.add(piece)
    return re.compile("".join(parts), re.DOTALL)


@functools.lru_cache(maxsize=64)
def _grader(name: str, options: str | None) -> Grader:
    return get_grader(name, json.loads(options) if options else None)


class ReplayJudge:
    """Verdicts of :class:`JudgeConfig` ``config`` on ``data``'s prompts."""

    def __init__(self, data: ReplayData, config: JudgeConfig) -> None:
        if config.model in data.responses:
            raise ValueError(f"judge.model: {config.model!r} is one of the data's models; choose another name")
        self.data = data
        self.config = config
        self._pattern = rubric_pattern(config.rubric)

    def verdict(self, request: str) -> tuple[str, str]:
        """(prompt id, verdict text) for the judge prompt ``request``; :class:`JudgeRefusal` when it cannot."""
        match = self._pattern.fullmatch(request)
        if match is None:
            raise JudgeRefusal(
                f"judge {self.config.model!r}: the last user message does not follow the judge's rubric "
                f"({request[:60]!r})",
                400,
                "not_a_judge_request",
            )
        prompt = self._asked(match["prompt"])
        ids = self.data.prompt_ids_by_hash.get(prompt_hash(prompt), ())
        prompt_id = next((pid for pid in ids if self._gradable(pid)), None)
        if prompt_id is None:
            why = "matches no prompt" if not ids else f"matches {list(ids)[:3]}, none with a grader the judge can apply"
            message = f"judge {self.config.model!r}: the judged prompt ({prompt[:60]!r}) {why}"
            raise JudgeRefusal(message, 404, "prompt_not_gradable")
        grading = self.data.gradings[prompt_id]
        item = GradeItem(match["response"], grading.reference, prompt, grading.tests)
        result = _grader(grading.grader, grading.options).grade_items([item])[0]
        if result.score is None:  # as the project's grader: not graded, so no score to give
            return prompt_id, f"Replay judge: the {grading.grader} grader cannot grade this answer: {result.error}"
        score = 1.0 - result.score if self._flipped(request) else result.score
        scale = _number(match.groupdict().get("scale"), self.config.scale)
        graded = f"Replay judge: graded by {grading.grader} against the prompt's reference."
        return prompt_id, f"{graded}\nScore: {score * scale:g}"

    def _asked(self, prompt: str) -> str:
        """The judged prompt's last user message: ``prompt`` itself, or where it is a JSON list of chat messages
        (a request's ``messages``) that matches no prompt as text, their last user message."""
        if prompt in ("", "(none)") or prompt_hash(prompt) in self.data.prompt_ids_by_hash:
            return prompt
        try:
            return last_user_text("(judged)", prompt, None) if prompt.lstrip().startswith("[") else prompt
        except ValueError:
            return prompt

    def _gradable(self, prompt_id: str) -> bool:
        grading = self.data.gradings.get(prompt_id)
        try:
            return grading is not None and not _grader(grading.grader, grading.options).needs_complete
        except ValueError:  # an unknown grader or bad options: nothing to apply
            return False

    def _flipped(self, request: str) -> bool:
        if self.config.noise <= 0:
            return False
        digest = hashlib.sha256(f"{self.config.seed}:{request}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.config.noise


def _number(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default
