"""Gold scorers: the Alpaca template, a neural gold RM with its own tokenizer, the config group."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose

from rmopt.errors import RmoptError
from rmopt.gold import HFGoldReward, alpaca_prompt, build_gold, gold_text


def test_alpaca_template_with_input():
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSort these letters.\n\n### Input:\nb a\n\n### Response:"
    )
    assert alpaca_prompt("Sort these letters.", "b a") == expected
    assert gold_text("alpaca", "Sort these letters.", "b a", "a b", eos="</s>") == expected + "a b</s>"


def test_alpaca_template_without_input():
    expected = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nList 2 animals.\n\n### Response:"
    )
    assert alpaca_prompt("List 2 animals.", "") == expected
    assert gold_text("alpaca", "List 2 animals.", "", "cat, dog") == expected + "cat, dog"


def test_prompt_format_template_and_unknown_template():
    assert (
        gold_text("prompt_format", "Hi.", "", "yo")
        == "<|prompter|>Hi.<|endoftext|><|assistant|>yo<|endoftext|>"
    )
    with pytest.raises(RmoptError, match=r"gold template 'chatml' is unknown"):
        gold_text("chatml", "a", "", "b")


@pytest.fixture(scope="module")
def gold_rm_dir(tmp_path_factory):
    """A tiny GPT-NeoX sequence classifier with its own 400-token tokenizer (not the policy's 512)."""
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    from rmopt.toy.tokenizer import train_toy_tokenizer
    from rmopt.utils import save_hf_folder

    tokenizer = train_toy_tokenizer(vocab_size=400)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPTNeoXForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    path = tmp_path_factory.mktemp("gold-rm")
    save_hf_folder(path, model.eval(), tokenizer)
    return path


def test_hf_gold_scores_from_text_in_its_own_format(gold_rm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    gold = HFGoldReward(str(gold_rm_dir), template="alpaca", device="cpu", batch_size=2, append_eos=True)
    assert len(gold.tokenizer) < 410  # its own tokenizer, not the toy policy's
    instructions = ["List 3 animals.", "Sort these letters.", "Repeat the word sun 2 times."]
    inputs = ["", "d c a", ""]
    answers = ["cat, dog, fox, owl, bee", "a c d", "sun"]
    scores = gold.score(instructions, inputs, answers)
    assert scores.dtype == np.float32 and scores.shape == (3,)

    # by hand: the Alpaca text + EOS, one unpadded sequence at a time, score at the last token
    tokenizer = AutoTokenizer.from_pretrained(gold_rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(gold_rm_dir).eval()
    for j, (i, x, a) in enumerate(zip(instructions, inputs, answers, strict=True)):
        text = alpaca_prompt(i, x) + a + tokenizer.eos_token
        assert gold.texts([i], [x], [a]) == [text]
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = model.base_model(input_ids=ids).last_hidden_state
            expected = model.score(hidden[:, -1]).item()
        assert scores[j] == pytest.approx(expected, abs=1e-4)
    assert len(set(scores.tolist())) == 3  # the answers are told apart
    left = HFGoldReward(str(gold_rm_dir), template="alpaca", device="cpu", batch_size=3, append_eos=True,
                        padding_side="left")
    assert left.encode(left.texts(instructions, inputs, answers))["attention_mask"][:, 0].tolist() != [1, 1, 1]
    assert left.score(instructions, inputs, answers).tolist() == pytest.approx(scores.tolist(), abs=1e-4)
    with pytest.raises(RmoptError, match="differ in length"):
        gold.score(instructions, inputs, answers[:2])


def test_gold_config_group(tmp_path, gold_rm_dir):
    from rmopt.toy.graded import ToyGoldReward  # the default toy world (data=toy)

    cfg = compose("bon", ["experiment=toy"], tmp_path)
    import hydra

    assert isinstance(build_gold(cfg.get("gold"), hydra.utils.instantiate(cfg.data)), ToyGoldReward)
    assert build_gold(compose("bon", ["gold=toy"], tmp_path).gold).name == ToyGoldReward.name
    cfg = compose("bon", ["gold=hf", f"gold.name_or_path={gold_rm_dir}", "gold.device=cpu"], tmp_path)
    gold = build_gold(cfg.gold)
    assert isinstance(gold, HFGoldReward) and gold.template == "prompt_format"
    cfg = compose("bon", ["gold=alpaca_farm"], tmp_path)
    # as AlpacaFarm scored: no EOS after the answer, left padding, 512 tokens (tests/test_alpaca_farm.py)
    assert cfg.gold.template == "alpaca" and cfg.gold.append_eos is False
    assert (cfg.gold.padding_side, cfg.gold.max_length) == ("left", 512)
    with pytest.raises(RmoptError, match="gold.padding_side='middle'"):
        HFGoldReward(str(gold_rm_dir), device="cpu", padding_side="middle")
    with pytest.raises(RmoptError, match="no gold reward model"):
        build_gold(None, object())
