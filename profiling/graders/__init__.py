"""Grade an LLM's response into a score in [0, 1], by graders registered by name and version.

Every grader has a ``name`` and a ``version`` that are stored with each grade, so a change of behaviour (a new
``version``) never silently mixes with old grades; options that are not their default are part of the version.
Get one by name, list them with ``grader_catalog()``, add one without editing the project through the
``uniroute.graders`` entry point group (a ``Grader`` subclass or a factory returning one):

>>> grader = get_grader("mmlu_pro_letter")
>>> grader.grade("... so the answer is (C).", "C")
1.0
>>> get_grader("numeric").grade_many(["It costs $1,250.50", "about 3/4"], ["1250.5", "0.7"])
array([1., 0.])
>>> get_grader("numeric", {"rel_tol": 0.1}).version
'1+rel_tol=0.1'

Graders that need more than (response, reference) grade ``GradeItem``\\ s (prompt, tests) with
``grade_items``, which never fails a batch for one item: it returns ``GradeResult(score=None, error=...)``.
"""

from profiling.graders._base import (
    REQUIRED,
    CompleteFn,
    Completion,
    GradeContext,
    GradeItem,
    Grader,
    GradeResult,
    JudgeCache,
    Option,
    PairGrader,
)
from profiling.graders._choice import (
    CHOICE_LETTERS,
    CHOICE_RULES,
    ChoiceExtractor,
    MMLUProLetterGrader,
    MultipleChoiceGrader,
    extract_choice,
    trace_choice,
)
from profiling.graders._code import CodeGrader, extract_code
from profiling.graders._judge import DEFAULT_RUBRIC, InMemoryJudgeCache, LLMJudgeGrader, judge_cache_key
from profiling.graders._registry import (
    BUILTIN_GRADERS,
    ENTRY_POINT_GROUP,
    get_grader,
    grader_catalog,
    grader_names,
    validate_grader,
)
from profiling.graders._text import ExactMatchGrader, NumericGrader, RegexGrader, extract_number, normalize_text

__all__ = [
    "BUILTIN_GRADERS",
    "CHOICE_LETTERS",
    "CHOICE_RULES",
    "DEFAULT_RUBRIC",
    "ENTRY_POINT_GROUP",
    "REQUIRED",
    "ChoiceExtractor",
    "CodeGrader",
    "CompleteFn",
    "Completion",
    "ExactMatchGrader",
    "GradeContext",
    "GradeItem",
    "GradeResult",
    "Grader",
    "InMemoryJudgeCache",
    "JudgeCache",
    "LLMJudgeGrader",
    "MMLUProLetterGrader",
    "MultipleChoiceGrader",
    "NumericGrader",
    "Option",
    "PairGrader",
    "RegexGrader",
    "extract_choice",
    "extract_code",
    "extract_number",
    "get_grader",
    "grader_catalog",
    "grader_names",
    "judge_cache_key",
    "normalize_text",
    "trace_choice",
    "validate_grader",
]
