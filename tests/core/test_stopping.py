"""One stopping rule on both backends (core/policy/generation.py): a Qwen-shaped model that memorized run-on
completions (past its second EOS id, past "Question:", through a padded-vocabulary id) must give the same token ids,
text and finish reasons through transformers and vLLM, with no appended token."""

import json

import pytest
import torch
from testing_utils import requires_vllm

from learnalign_pipeline.core.policy.generation import SamplingSpec, TransformersBackend, finish_completion
from learnalign_pipeline.core.policy.model import ENDOFTEXT, IM_END, save_policy
from learnalign_pipeline.core.policy.vllm_backend import VLLMBackend, VLLMConfig

# question -> the completion the model memorizes (it runs on past where it should stop)
SCRIPTS = {
    "Ann has 7 pens and gets 5 more.": " 7+5=12. #### 12" + ENDOFTEXT + "Question: Ben has 3 eggs",
    "Ben has 3 eggs and gets 4 more.": " 3+4=7. #### 7" + IM_END + "\nQuestion: Cal has",
    "Cal buys 2 bags with 3 cards each.": " 2*3=6. #### 6\n\nQuestion: Dee has 9 coins",
    "Dee has 1 coin and gets 1 more.": " 1+1=2. 1+1=2. 1+1=2. 1+1=2. 1+1=2. 1+1=2.",
}
STOP = ("Question:",)
PADDED_QUESTION = "Fay has 2 pens."  # its completion samples an id beyond the tokenizer, then <|im_end|>


@pytest.fixture(scope="module")
def runon(qwen_tokenizer, tmp_path_factory):
    """(model, tokenizer, chat prompts, checkpoint path) of a model trained until greedy decoding replays SCRIPTS."""
    from conftest import QWEN_TINY

    from learnalign_pipeline.core.policy.model import build_model
    from learnalign_pipeline.core.training.sft import target_batch

    tok = qwen_tokenizer
    torch.manual_seed(0)
    model = build_model(QWEN_TINY.__class__(**{**QWEN_TINY.__dict__, "tie_word_embeddings": False}), tok, 0)
    chat = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in [*SCRIPTS, PADDED_QUESTION]
    ]
    targets = [tok(t)["input_ids"] for t in SCRIPTS.values()]
    padded_id = len(tok) + 5
    assert padded_id < model.config.vocab_size
    targets.append(tok(" 2")["input_ids"] + [padded_id] + tok(" #### 2")["input_ids"] + [tok.eos_token_id])
    input_ids, attention_mask, labels = target_batch([tok(p)["input_ids"] for p in chat], targets, tok.pad_token_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(600):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 1e-3:
            break
    model.eval()
    path = tmp_path_factory.mktemp("runon") / "policy"
    save_policy(model, tok, path, dtype=torch.bfloat16)
    model = model.to(torch.bfloat16).float()  # what the checkpoint holds, so both backends run the same weights
    return model, tok, chat, path


def _expected_shapes(completions, tok):
    """What the rule must produce for each scripted prompt."""
    eos, endoftext = tok.eos_token_id, tok.convert_tokens_to_ids(ENDOFTEXT)
    ann, ben, cal, dee, fay = completions
    assert ann.token_ids[-1] == endoftext and ann.finish_reason == "stop" and ann.text == " 7+5=12. #### 12"
    assert ben.token_ids[-1] == eos and ben.text == " 3+4=7. #### 7"
    assert cal.finish_reason == "stop" and cal.text == " 2*3=6. #### 6\n\n"
    assert tok.decode(list(cal.token_ids)).endswith("Question:")  # the sampled stop-string tokens stay, nothing after
    assert dee.finish_reason == "length" and len(dee.token_ids) == 24
    assert any(i >= len(tok) for i in fay.token_ids) and fay.text == " 2 #### 2" and fay.token_ids[-1] == eos


def test_transformers_stops_on_every_eos_id_and_stop_strings(runon):
    model, tok, chat, _ = runon
    completions = TransformersBackend(model, tok).generate(chat, SamplingSpec(1, 0.0, 1.0, 24, STOP), [0] * len(chat))
    _expected_shapes([g[0] for g in completions], tok)


@requires_vllm
def test_vllm_gives_the_same_ids_text_and_finish_reasons(runon):
    model, tok, chat, path = runon
    spec = SamplingSpec(1, 0.0, 1.0, 24, STOP)
    ours = [g[0] for g in TransformersBackend(model, tok).generate(chat, spec, [0] * len(chat))]
    engine = VLLMBackend(str(path), VLLMConfig(dtype="float32"))
    try:
        theirs = [g[0] for g in engine.generate(chat, spec, [0] * len(chat))]
        sampled = engine.generate(chat[:1], SamplingSpec(32, 1.0, 1.0, 24, STOP), [64])
    finally:
        engine.close()
    _expected_shapes(theirs, tok)
    assert [c.token_ids for c in theirs] == [c.token_ids for c in ours]
    assert [(c.text, c.finish_reason) for c in theirs] == [(c.text, c.finish_reason) for c in ours]
    stop_ids = {tok.eos_token_id, tok.convert_tokens_to_ids(ENDOFTEXT)}
    for c in sampled[0]:  # sampled completions: a stop id only ever as the last, sampled token
        assert not stop_ids & set(c.token_ids[:-1]) and (c.finish_reason == "stop") == (c.token_ids[-1] in stop_ids)


def test_the_rule_on_raw_streams(qwen_tokenizer):
    tok = qwen_tokenizer
    eos, endoftext = tok.eos_token_id, tok.convert_tokens_to_ids(ENDOFTEXT)
    stop_ids = (eos, endoftext)
    body = tok(" 6 apples\n\nQuestion: next")["input_ids"]
    # a stop string, then the pad id transformers writes after a finished row (here also an EOS id): not kept
    by_string = finish_completion(body + [endoftext, endoftext], stop_ids, STOP, tok)
    assert by_string.text == " 6 apples\n\n" and by_string.finish_reason == "stop"
    assert endoftext not in by_string.token_ids and tok.decode(list(by_string.token_ids)).endswith("Question:")
    assert finish_completion(by_string.token_ids, stop_ids, STOP, tok) == by_string  # idempotent
    # an EOS id before any stop string: kept (it was sampled), not in the text
    by_id = finish_completion(tok(" 6")["input_ids"] + [endoftext] + body, stop_ids, STOP, tok)
    assert by_id.token_ids[-1] == endoftext and by_id.text == " 6"
    # neither: length, everything kept
    plain = finish_completion(tok(" 6 apples")["input_ids"], stop_ids, STOP, tok)
    assert plain.finish_reason == "length" and plain.text == " 6 apples"


def test_checkpoint_sampling_defaults_never_leak_into_greedy_decoding(qwen_model, qwen_tokenizer):
    """The checkpoint's generation_config.json carries repetition_penalty 1.05 (as Qwen2.5-Instruct's does):
    greedy completions must still be the plain argmax chain."""
    model, tok = qwen_model(), qwen_tokenizer
    assert model.generation_config.repetition_penalty == 1.05
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Ann has 3 pens."}], tokenize=False, add_generation_prompt=True
    )
    completion = TransformersBackend(model, tok).generate([prompt], SamplingSpec.greedy(16), [0])[0][0]
    ids = tok(prompt, return_tensors="pt").input_ids
    chain = []
    with torch.no_grad():
        for _ in range(len(completion.token_ids)):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            chain.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert list(completion.token_ids) == chain


def test_padded_vocabulary_sampling(qwen_model, qwen_tokenizer):
    """451 = 448 logits for 323 tokens: sampling draws noise for every logit column."""
    model, tok = qwen_model(), qwen_tokenizer
    assert model.config.vocab_size > len(tok)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Ann has 3 pens."}], tokenize=False, add_generation_prompt=True
    )
    groups = TransformersBackend(model, tok).generate([prompt, prompt], SamplingSpec(4, 1.0, 1.0, 12), [0, 4])
    assert all(len(c.token_ids) >= 1 for g in groups for c in g)
    assert [c.token_ids for c in groups[0]] != [c.token_ids for c in groups[1]]


def test_samples_do_not_depend_on_max_new_tokens(model, tokenizer):
    """Noise is drawn step by step: a shorter limit gives a prefix of the longer completion, not other samples."""
    prompt = "Q: Ann has 3 pens and gets 4 more. How many pens does Ann have?\nA:"
    backend = TransformersBackend(model, tokenizer)
    short = backend.generate([prompt], SamplingSpec(4, 1.0, 1.0, 6), [8])[0]
    long = backend.generate([prompt], SamplingSpec(4, 1.0, 1.0, 24), [8])[0]
    for s, lo in zip(short, long):
        assert lo.token_ids[: len(s.token_ids)] == s.token_ids


def test_stop_strings_come_from_the_prompt_template():
    from learnalign_pipeline.core.task.prompts import PromptFormat

    assert "Question:" in PromptFormat("lm_eval_gsm8k").stop and PromptFormat("qa").stop == ()
    assert json.loads(json.dumps(PromptFormat("lm_eval_gsm8k", chat=True).stop))  # plain strings
