"""How a problem is posed to the policy and how its answer is checked: one setting shared by every stage that
generates (rollouts, training, benchmarks), so they all ask the same question the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..settings import require, require_finite, setting
from .prompts import TEMPLATES, PromptFormat
from .verify import VERIFIERS, make_verifier

VerifierName = Literal["numeric_flexible", "numeric_strict", "math_verify"]


@dataclass(frozen=True)
class TaskConfig:
    """The task: prompt template and verifier.

    > Prompt
        template, chat
    > Answer checking
        verifier, verifier_timeout_s
    > Generation length
        max_new_tokens (rollouts, training and benchmarks)
    """

    template: str = setting("qa", "prompt template name (core/task/prompts.py TEMPLATES)")
    chat: bool = setting(False, "wrap prompts in the model's chat template (instruct models)")
    verifier: VerifierName = setting(
        "numeric_flexible",
        "numeric_flexible / numeric_strict for GSM8K-style numbers (lm-eval filters), math_verify for LaTeX and "
        "\\boxed{} answers (MATH)",
    )
    verifier_timeout_s: float = setting(5.0, "math_verify: wall-clock limit per answer; a timeout scores 0")
    max_new_tokens: int = setting(24, "completion length limit for rollouts, training and benchmarks")

    def __post_init__(self) -> None:
        require_finite(self)
        require(
            self.template in TEMPLATES, "template", f"unknown template {self.template!r}; known: {sorted(TEMPLATES)}"
        )
        require(self.verifier in VERIFIERS, "verifier", f"unknown verifier {self.verifier!r}; known: {list(VERIFIERS)}")
        require(self.verifier_timeout_s > 0, "verifier_timeout_s", "must be > 0")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")

    def prompt_format(self, shots: tuple[tuple[str, str], ...] = ()) -> PromptFormat:
        return PromptFormat(self.template, shots=shots, chat=self.chat)

    def make_verifier(self):
        return make_verifier(self.verifier, timeout_s=self.verifier_timeout_s)
