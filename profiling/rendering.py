"""What an LLM is asked: the rendered prompt per dataset, and a token estimate where no tokenizer is at hand."""

from __future__ import annotations

import math

LETTERS = "ABCDEFGHIJ"
#: Rule-of-thumb token count for English text (~4 characters per token), used where a model reports none.
CHARS_PER_TOKEN = 4.0

_MMLU_PRO_INSTRUCTION = (
    "The following are multiple choice questions (with answers) about {category}. Think step by step and then "
    'finish your answer with "the answer is (X)" where X is the correct letter choice.'
)


def router_input(question: str, options: list[str]) -> str:
    """What the router sees of a multiple-choice prompt: the question and its lettered options."""
    return "\n".join([question.strip()] + [f"({LETTERS[i]}) {option}" for i, option in enumerate(options)])


def render_mmlu_pro(question: str, options: list[str], category: str) -> str:
    """MMLU-Pro's chain-of-thought prompt (zero-shot): instruction, question, lettered options, "Let's think"."""
    if len(options) > len(LETTERS):
        raise ValueError(f"options: {len(options)} given, at most {len(LETTERS)} supported")
    lines = [_MMLU_PRO_INSTRUCTION.format(category=category), "", f"Question: {question.strip()}", "Options:"]
    lines += [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    lines.append("Answer: Let's think step by step.")
    return "\n".join(lines)


def estimate_tokens(text: str) -> int:
    """Approximate token count of ``text`` (at least 1)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))
