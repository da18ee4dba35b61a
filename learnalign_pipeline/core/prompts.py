"""Prompt templates: how a problem becomes the text a policy continues.

The template is part of what a benchmark number means, so it has a name that is recorded beside every result.
"""

from __future__ import annotations

TEMPLATES: dict[str, str] = {
    # The tiny built-in policy is trained on exactly this format; its completions end in "#### <answer>".
    "qa": "Q: {prompt}\nA:",
    # lm-evaluation-harness gsm8k (zero-shot form of its 5-shot template).
    "lm_eval_gsm8k": "Question: {prompt}\nAnswer:",
    # The RLVR papers' zero-shot instruction for chat models (applied inside the chat template when one exists).
    "boxed": "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
}


def render(template: str, prompt: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[template].format(prompt=prompt)
