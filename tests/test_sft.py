import pytest
import torch

from rmopt.data.collate import tokenize_sft
from rmopt.losses import IGNORE_INDEX, sft_loss
from rmopt.prompts import ASSISTANT, EOS, PROMPTER, format_answer, format_prompt, split_prompt


def test_prompt_format():
    assert format_prompt("Sort these letters.", "b a") == f"{PROMPTER}Sort these letters.\nb a{EOS}{ASSISTANT}"
    assert format_prompt("List 2 colors.", "") == f"{PROMPTER}List 2 colors.{EOS}{ASSISTANT}"
    assert format_answer("a b") == f"a b{EOS}"
    assert split_prompt(format_prompt("Sort these letters.", "b a")) == ("Sort these letters.", "b a")


def test_tokenizer_round_trip_and_special_tokens(toy_tokenizer):
    text = format_prompt("Sort these letters.", "d a c") + format_answer("a c d")
    ids = toy_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert toy_tokenizer.decode(ids) == text
    for token in (PROMPTER, ASSISTANT, EOS):
        assert toy_tokenizer.convert_tokens_to_ids(token) in ids
        assert len(toy_tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert toy_tokenizer.pad_token_id != toy_tokenizer.eos_token_id
    for text in ["List 5 metals.\ncopper, nickel", "Repeat the word snow 4 times.", "x y z, q"]:
        assert toy_tokenizer.decode(toy_tokenizer(text)["input_ids"]) == text


def test_prompt_masking_on_hand_made_example(toy_tokenizer):
    (row,) = tokenize_sft(toy_tokenizer, ["Sort these letters."], ["b a"], ["a b"], max_length=64)
    prompt_ids = toy_tokenizer(format_prompt("Sort these letters.", "b a"), add_special_tokens=False)["input_ids"]
    answer_ids = toy_tokenizer("a b" + EOS, add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == prompt_ids + answer_ids
    assert row["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def test_sft_loss_counts_answer_tokens_only():
    # vocab 3, sequence of 4 tokens; labels mask the first two (prompt) positions
    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([0.0, 0.0, 2.0])  # predicts token 2 at position 2
    logits[0, 2] = torch.tensor([1.0, 0.0, 0.0])  # predicts token 0 at position 3
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 1]])
    loss, n = sft_loss(logits, labels)
    log_z1 = torch.logsumexp(torch.tensor([0.0, 0.0, 2.0]), 0)
    log_z2 = torch.logsumexp(torch.tensor([1.0, 0.0, 0.0]), 0)
    expected = ((log_z1 - 2.0) + (log_z2 - 0.0)) / 2
    assert n.item() == 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # changing a prompt position's logits changes nothing
    logits[0, 0] = 5.0
    assert sft_loss(logits, labels)[0].item() == pytest.approx(expected.item(), rel=1e-6)


def test_short_sft_lowers_loss_and_reloads_with_identical_logits(toy_sft_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rmopt.stage import CONFIG_PATH  # noqa: F401  (the fixture trained through rmopt.sft.train)

    tokenizer = AutoTokenizer.from_pretrained(toy_sft_dir)
    model = AutoModelForCausalLM.from_pretrained(toy_sft_dir).eval()
    ids = tokenizer(format_prompt("List 3 animals.", "") + "cat, dog", return_tensors="pt")["input_ids"]
    again = AutoModelForCausalLM.from_pretrained(toy_sft_dir).eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert (toy_sft_dir / "rmopt_config.yaml").exists()
    history = __import__("json").loads((toy_sft_dir / "sft_history.json").read_text())
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.3
