"""Prompt templates: how a problem becomes the text a policy continues.

The template is part of what a benchmark number means, so it has a name that is recorded beside every result.
"""

from __future__ import annotations

from dataclasses import dataclass

TEMPLATES: dict[str, str] = {
    # The tiny built-in policy is trained on exactly this format; its completions end in "#### <answer>".
    "qa": "Q: {prompt}\nA:",
    # lm-evaluation-harness gsm8k; with `shots` it is lm-eval's few-shot prompt (5-shot: the first 5 train problems).
    "lm_eval_gsm8k": "Question: {prompt}\nAnswer:",
    # The RLVR papers' zero-shot instruction for chat models (use with chat=True).
    "boxed": "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
}


# Where a completion of each template ends besides the model's EOS ids: lm-eval's gsm8k `until` list (a base model,
# or an instruct model without its chat template, goes on to write the next "Question: ..." and the last-number
# verifier would score that). The built-in policy's "qa" format ends with its EOS.
TEMPLATE_STOPS: dict[str, tuple[str, ...]] = {"lm_eval_gsm8k": ("Question:", "</s>", "<|im_end|>")}


@dataclass(frozen=True)
class PromptFormat:
    """A template, optional worked exemplars before the question, optionally wrapped in the model's chat template."""

    template: str = "qa"
    shots: tuple[tuple[str, str], ...] = ()  # (question, worked answer) pairs, in order
    chat: bool = False  # apply the tokenizer's chat template (instruct models)

    @property
    def name(self) -> str:
        return f"{self.template}{f'_{len(self.shots)}shot' if self.shots else ''}{'_chat' if self.chat else ''}"

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings of the template: generation ends at the token that completes one."""
        return TEMPLATE_STOPS.get(self.template, ())

    def render(self, question: str, tokenizer=None) -> str:
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown prompt template {self.template!r}; known: {sorted(TEMPLATES)}")
        form = TEMPLATES[self.template]
        text = "".join(f"{form.format(prompt=q)} {a}\n\n" for q, a in self.shots) + form.format(prompt=question)
        if not self.chat:
            return text
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat=True needs a tokenizer with a chat template (instruct models have one)")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )


def render(template: str | PromptFormat, prompt: str, tokenizer=None) -> str:
    fmt = template if isinstance(template, PromptFormat) else PromptFormat(template)
    return fmt.render(prompt, tokenizer)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt, with the model's BOS exactly once.

    A tokenizer that adds BOS (Llama 3, Mistral, Gemma) would add a second one to a chat prompt whose template
    already wrote it, and the model would see a sequence it was never trained on; special tokens are therefore
    added only when the text does not already begin with the BOS token.
    """
    bos = getattr(tokenizer, "bos_token", None)
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of text that continues a sequence (a target answer): no BOS or other special token added."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pad_token_id(tokenizer) -> int:
    """The id padding positions hold. Tokenizers that ship without a pad token (Llama 3) pad with EOS, as TRL does;
    padded positions are masked, so the value never reaches a result."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token: set tokenizer.pad_token")
    return pad
