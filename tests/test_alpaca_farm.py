"""The paper's gold RM path, offline: AlpacaFarm's recovered ``reward-model-human`` (a tiny stand-in in the
real folder layout, tests/llama_stand_in.py) converted by ``rmopt-convert-alpacafarm-rm`` and scored by
``gold=alpaca_farm`` exactly as AlpacaFarm scored it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose
from llama_stand_in import BOS_ID, EOS_ID, PAD_ID, char_ids, load_original, save_recovered

from rmopt.convert_alpaca_farm import convert, main
from rmopt.gold import alpaca_prompt, build_gold

INSTRUCTIONS = ["List 3 animals.", "Sort these letters.", "Repeat the word sun.", "Say hi."]
INPUTS = ["", "d c a", "", ""]
ANSWERS = ["cat, dog, fox", "a c d", "sun", "hi " * 300]  # the last one is cut at 512 tokens


@pytest.fixture(scope="module")
def recovered(tmp_path_factory):
    """The stand-in as transformers 4.29 saved it: three .bin shards with an index, inv_freq buffers."""
    return save_recovered(tmp_path_factory.mktemp("alpaca-farm") / "pretrained_models")


@pytest.fixture(scope="module")
def converted(recovered, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "reward-model-human"
    convert(recovered[0], out)
    return out


def alpaca_gold(folder, **overrides):
    args = [f"gold.{k}={v}" for k, v in {"device": "cpu", "dtype": "float32", **overrides}.items()]
    return build_gold(compose("bon", ["gold=alpaca_farm", f"gold.name_or_path={folder}", *args]).gold)


def test_the_alpaca_farm_config_scores_as_alpaca_farm_did():
    cfg = compose("bon", ["gold=alpaca_farm"]).gold
    assert (cfg.template, cfg.append_eos, cfg.padding_side, cfg.max_length) == ("alpaca", False, "left", 512)


def test_gold_text_and_token_ids_with_and_without_input(converted):
    gold = alpaca_gold(converted)
    with_input = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSort these letters.\n\n### Input:\nd c a\n\n### Response:a c d"
    )
    without_input = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nList 3 animals.\n\n### Response:cat, dog, fox"
    )
    texts = gold.texts(INSTRUCTIONS[:2], INPUTS[:2], ANSWERS[:2])
    assert texts == [without_input, with_input]  # the answer right after "### Response:", no EOS
    enc = gold.encode(texts)
    ids, mask = enc["input_ids"].tolist(), enc["attention_mask"].tolist()
    expected = [[BOS_ID, *char_ids(t)] for t in texts]
    # by hand: "▁" "B" "e" "l" "o" "w" "▁" ... and "\n" as LLaMA's byte token <0x0A> = 13
    assert expected[0][:8] == [1, 259, 293, 328, 335, 338, 346, 259] and expected[1][-3:] == [326, 259, 327]
    width = max(map(len, expected))
    assert len(expected[1]) == width > len(expected[0])
    for row, m, e in zip(ids, mask, expected, strict=True):
        pad = width - len(e)
        assert row == [PAD_ID] * pad + e  # left padding with [PAD], BOS first, no EOS at the end
        assert m == [0] * pad + [1] * len(e)
        assert EOS_ID not in row


def test_truncation_keeps_the_first_512_tokens(converted):
    gold = alpaca_gold(converted)
    (text,) = gold.texts(INSTRUCTIONS[3:], INPUTS[3:], ANSWERS[3:])
    assert len(char_ids(text)) > 600
    ids = gold.encode([text])["input_ids"][0].tolist()
    assert ids == ([BOS_ID, *char_ids(text)])[:512]


def test_converted_scores_equal_the_original_reward_model(recovered, converted):
    """reward_head(last hidden state) of AlpacaFarm's RewardModel on each text alone, computed here from the
    recovered shards, equals the converted model's gold score: exactly one at a time, to rounding in
    left-padded batches."""
    original = load_original(recovered[0])
    gold = alpaca_gold(converted)
    expected = []
    for text in gold.texts(INSTRUCTIONS, INPUTS, ANSWERS):
        ids = torch.tensor([[BOS_ID, *char_ids(text)][:512]])
        with torch.no_grad():
            expected.append(original(ids, torch.ones_like(ids)).item())
    alone = gold.score(INSTRUCTIONS, INPUTS, ANSWERS, batch_size=1)
    assert alone.tolist() == expected
    batched = gold.score(INSTRUCTIONS, INPUTS, ANSWERS, batch_size=4)
    assert batched.tolist() == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) == 4
    # without the kept bias every score would be off by the same constant
    bias = json.loads((converted / "config.json").read_text())["score_bias"]
    assert bias == original.reward_head.bias.item()


def test_converted_folder_is_a_plain_llama_sequence_classifier(converted):
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(converted)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == PAD_ID  # the tokenizer's [PAD], not the backbone config's 0 (<unk>)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("[PAD]", PAD_ID)
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    keys = set(index["weight_map"])
    assert "score.weight" in keys and not any("lm_head" in k or "inv_freq" in k or "reward_head" in k for k in keys)
    assert all(k == "score.weight" or k.startswith("model.") for k in keys)
    for shard in set(index["weight_map"].values()):
        with safe_open(str(converted / shard), "pt") as f:
            assert set(f.keys()) == {k for k, v in index["weight_map"].items() if v == shard}
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json"):
        assert (converted / name).exists()


def test_safetensors_layout_and_a_relative_backbone_path(recovered, converted, tmp_path, monkeypatch):
    """A recovery run with newer transformers: safetensors shards, no inv_freq; the config names the backbone
    relative to the folder the recovery ran in (./pretrained_models/sft10k), found beside the RM here."""
    from safetensors.torch import load_file

    rm_dir, _ = save_recovered(tmp_path / "pretrained_models", layout="safetensors", inv_freq=False, shards=2,
                               backbone_name="./pretrained_models/sft10k")
    monkeypatch.chdir(tmp_path / "pretrained_models")  # ./pretrained_models/sft10k does not resolve from here
    out = tmp_path / "out"
    summary = convert(rm_dir, out)
    assert summary["backbone"] == str(rm_dir.parent / "sft10k") and summary["dropped"] == 1  # lm_head only
    assert len(summary["shards"]) == 2
    def weights(folder):
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        return {k: v for s in set(index["weight_map"].values()) for k, v in load_file(str(folder / s)).items()}

    a, b = weights(out), weights(converted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same tensors


def test_dtype_option_and_a_single_shard(tmp_path):
    from safetensors import safe_open

    rm_dir, _ = save_recovered(tmp_path / "rec", shards=1)
    out = tmp_path / "out"
    main([str(rm_dir), str(out), "--dtype", "bfloat16"])
    assert not (out / "model.safetensors.index.json").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"


def _drop(key):
    return lambda s: {k: v for k, v in s.items() if k != key}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: {**s, "backbone_model.model.extra.weight": torch.zeros(2)},
         r"unexpected tensor 'backbone_model.model.extra.weight'|has no place"),
        (lambda s: {**s, "value_head.weight": torch.zeros(2)}, r"unexpected tensor 'value_head.weight' in pytorch_model-"),
        (_drop("reward_head.bias"), r"no reward_head.bias"),
        (_drop("backbone_model.model.norm.weight"), r"lacks 1 tensor\(s\) of its backbone, e.g. \['model.norm.weight'\]"),
        (lambda s: {**s, "reward_head.weight": torch.zeros(2, 32)}, r"'reward_head.weight' .* shape \(2, 32\)"),
    ],
)
def test_converter_refuses_other_weights_with_one_line(tmp_path, capsys, edit, message):
    rm_dir, _ = save_recovered(tmp_path / "rec", state_edit=edit)
    with pytest.raises(SystemExit) as exit_info:
        main([str(rm_dir), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_gold_points_at_the_converter_when_given_the_recovered_folder(recovered):
    from rmopt.errors import RmoptError, user_error

    with pytest.raises(Exception) as info:  # Hydra's instantiate wraps it; the CLIs print the RmoptError
        alpaca_gold(recovered[0])
    cause = user_error(info.value)
    assert isinstance(cause, RmoptError)
    assert __import__("re").search(r"is AlpacaFarm's RewardModel .*; convert it first: rmopt-convert-alpacafarm-rm ", str(cause))


def test_converter_refuses_a_wrong_folder_with_one_line(tmp_path, capsys, recovered):
    rm_dir, _ = save_recovered(tmp_path / "rec", backbone_name="/juice5/models/sft_v6_llama_7b")
    cases = [
        ([str(rm_dir), str(tmp_path / "o1")], r"backbone config path '/juice5/models/sft_v6_llama_7b' does not exist; "
                                               r"pass --backbone DIR"),
        ([str(rm_dir / "config.json"), str(tmp_path / "o2")], r"does not exist"),
        ([str(recovered[1]), str(tmp_path / "o3")], r"model_type 'llama'; expected 'reward_model'"),
        ([str(rm_dir), str(tmp_path / "o4"), "--backbone", str(tmp_path)], r"--backbone .* is not a folder with a config.json"),
        ([str(rm_dir), str(rm_dir.parent)], r"exists and is not empty"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and err.count("\n") == 1, err
        assert __import__("re").search(message, err), err
    main([str(rm_dir), str(tmp_path / "o5"), "--backbone", str(recovered[1])])  # the hint works
    assert "wrote" in capsys.readouterr().out


def test_alpaca_prompt_is_alpaca_farms_v0_template():
    """examples/prompts/v0_inputs_noinputs.json, character for character."""
    v0 = {
        "prompt_noinputs": "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:",
        "prompt_inputs": "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}"
        "\n\n### Input:\n{input}\n\n### Response:",
    }
    assert alpaca_prompt("X", "") == v0["prompt_noinputs"].format(instruction="X")
    assert alpaca_prompt("X", "Y") == v0["prompt_inputs"].format(instruction="X", input="Y")


def test_console_script_is_declared():
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '\nrmopt-convert-alpacafarm-rm = "rmopt.convert_alpaca_farm:main"\n' in pyproject


def test_gold_dtype_is_honoured(converted):
    """gold.dtype reaches from_pretrained(dtype=...), a keyword of transformers >= 4.56 (pyproject's lower
    bound): 4.55 takes it for a config field and fails on it."""
    gold = alpaca_gold(converted, dtype="bfloat16")
    assert {p.dtype for p in gold.model.parameters()} == {torch.bfloat16}
    assert gold.model.score.bias.item() == torch.tensor(gold.model.config.score_bias).bfloat16().item()
    scores = gold.score(INSTRUCTIONS[:2], INPUTS[:2], ANSWERS[:2])
    assert scores.dtype.name == "float32" and len(set(scores.tolist())) == 2


def test_gold_from_a_model_in_memory_scores_as_from_its_folder(converted):
    """HFGoldReward.from_model (the GPU check builds its 7B-shaped gold in memory) = the folder's gold."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rmopt.gold import HFGoldReward

    folder = alpaca_gold(converted)
    memory = HFGoldReward.from_model(
        AutoModelForSequenceClassification.from_pretrained(converted), AutoTokenizer.from_pretrained(converted),
        device="cpu", padding_side="left", max_length=512,
    )
    assert memory.score(INSTRUCTIONS, INPUTS, ANSWERS).tolist() == folder.score(INSTRUCTIONS, INPUTS, ANSWERS).tolist()
