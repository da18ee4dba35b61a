import pytest

from learnalign_pipeline.core.task.prompts import PromptFormat, render


def test_zero_shot_and_few_shot_rendering():
    assert render("lm_eval_gsm8k", "What is 2+2?") == "Question: What is 2+2?\nAnswer:"
    fmt = PromptFormat("lm_eval_gsm8k", shots=(("1+1?", "1+1=2. #### 2"), ("2+3?", "2+3=5. #### 5")))
    assert (
        fmt.render("4+4?")
        == "Question: 1+1?\nAnswer: 1+1=2. #### 2\n\nQuestion: 2+3?\nAnswer: 2+3=5. #### 5\n\nQuestion: 4+4?\nAnswer:"
    )
    assert fmt.name == "lm_eval_gsm8k_2shot"


def test_chat_format_uses_the_tokenizer_template(tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        PromptFormat("boxed", chat=True).render("1+1?", tokenizer)
    tokenizer.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
    try:
        text = PromptFormat("boxed", chat=True).render("1+1?", tokenizer)
    finally:
        tokenizer.chat_template = None
    assert text.startswith("<|user|>1+1?\nPlease reason step by step") and text.endswith("<|assistant|>")


def test_unknown_template_is_an_error():
    with pytest.raises(ValueError, match="unknown prompt template"):
        render("nope", "1+1?")
