"""The paths real runs take, offline: local stand-ins in the published schemas go through the same
loading code as the hub names (Pythia-like models, AlpacaFarm and the gold-labelled sets)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import TINY, compose

from rmopt.errors import RmoptError
from rmopt.prompts import ASSISTANT, EOS, PAD, PROMPTER

# --------------------------------------------------------------------------------------------
# a Pythia stand-in: GPT-NeoX, untied output embeddings, a tokenizer with only <|endoftext|> and
# <|padding|> as special tokens and no pad token set (as Pythia's)


@pytest.fixture(scope="module")
def pythia_like_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from rmopt.toy.world import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=1), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    assert tokenizer.pad_token is None and PROMPTER not in tokenizer.get_vocab()
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, **TINY
    )
    path = tmp_path_factory.mktemp("pythia-like")
    GPTNeoXForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _safetensors_keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_loading_adds_prompt_tokens_and_resizes_embeddings(pythia_like_dir):
    from rmopt.models import ModelSource, check_special_tokens

    saved = _safetensors_keys(pythia_like_dir)
    old = saved["gpt_neox.embed_in.weight"].shape[0]
    source = ModelSource(name_or_path=str(pythia_like_dir))
    tokenizer = source.load_tokenizer()
    check_special_tokens(tokenizer)
    assert len(tokenizer) == old + 2  # <|prompter|>, <|assistant|>; <|padding|> was in the vocab
    assert tokenizer.pad_token == PAD and tokenizer.pad_token_id == 1 and tokenizer.eos_token_id == 0
    text = f"{PROMPTER}List 2 colors.{EOS}{ASSISTANT}red, blue{EOS}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids(PROMPTER) >= old
    assert tokenizer.convert_tokens_to_ids(ASSISTANT) in ids and tokenizer.decode(ids) == text

    model = source.load_causal_lm(tokenizer)
    emb_in, emb_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb_in.shape[0] == emb_out.shape[0] == len(tokenizer) and emb_in.data_ptr() != emb_out.data_ptr()
    assert torch.equal(emb_in[:old], saved["gpt_neox.embed_in.weight"])
    assert torch.equal(emb_out[:old], saved["embed_out.weight"])
    # the new rows start at the mean of the old ones (input and output embeddings each)
    for new, table in ((emb_in, saved["gpt_neox.embed_in.weight"]), (emb_out, saved["embed_out.weight"])):
        torch.testing.assert_close(new[old:], table.mean(0, keepdim=True).expand(2, -1))
    assert model.config.pad_token_id == 1 and model.generation_config.eos_token_id == 0

    rm = source.load_reward_model(tokenizer)  # trunk of the LM, fresh one-output head
    assert rm.config.num_labels == 1 and rm.score.weight.shape == (1, TINY["hidden_size"])
    assert torch.equal(
        rm.gpt_neox.layers[0].mlp.dense_h_to_4h.weight, model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
    )
    assert torch.equal(rm.get_input_embeddings().weight, emb_in)


def test_lm_head_is_saved_as_embed_out_and_reloads_identically(pythia_like_dir, tmp_path):
    from rmopt.models import ModelSource
    from rmopt.utils import save_hf_folder

    source = ModelSource(name_or_path=str(pythia_like_dir))
    tokenizer = source.load_tokenizer()
    model = source.load_causal_lm(tokenizer).eval()
    save_hf_folder(tmp_path, model, tokenizer)
    on_disk = _safetensors_keys(tmp_path)
    assert "embed_out.weight" in on_disk and "lm_head.weight" not in on_disk
    assert torch.equal(on_disk["embed_out.weight"], model.get_output_embeddings().weight)  # lm_head (5.x), embed_out (4.x)

    again = ModelSource(name_or_path=str(tmp_path))
    tokenizer2 = again.load_tokenizer()
    assert len(tokenizer2) == len(tokenizer)  # nothing added the second time
    model2 = again.load_causal_lm(tokenizer2).eval()
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    ids = torch.tensor(
        [tokenizer("<|prompter|>Sort these letters.\nb a<|endoftext|><|assistant|>a b")["input_ids"]]
    )
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)


# --------------------------------------------------------------------------------------------
# local data in each published schema


def _instruction_rows(n, tag):
    return {
        "instruction": [f"{tag} task {i}." for i in range(n)],
        "input": ["" if i % 2 else f"x{i}" for i in range(n)],
        "output": [f"answer {i}" for i in range(n)],
    }


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Stand-ins for tatsu-lab/alpaca_farm (both subsets), the gold-labelled pairs and gens."""
    import datasets

    root = tmp_path_factory.mktemp("published")
    splits = {"sft": 40, "preference": 12, "unlabeled": 6, "val": 10}
    datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(_instruction_rows(n, s)) for s, n in splits.items()}
    ).save_to_disk(root / "alpaca_farm" / "alpaca_instructions")
    human = {
        "instruction": [f"q{i}" for i in range(20)],
        "input": [""] * 20,
        "output_1": [f"a{i}" for i in range(20)],
        "output_2": [f"b{i}" for i in range(20)],
        "preference": [1 + (i % 3 == 0) for i in range(20)],
        "raw_preference": [0.5] * 20,
    }
    datasets.DatasetDict({"preference": datasets.Dataset.from_dict(human)}).save_to_disk(
        root / "alpaca_farm" / "alpaca_human_preference"
    )
    pairs = root / "pairs"  # a folder of Parquet files, split names from the file names
    pairs.mkdir()
    for split, n in (("train", 8), ("validation", 4)):
        datasets.Dataset.from_dict(
            {
                "instruction": [f"{split} {i}" for i in range(n)],
                "input": [""] * n,
                "answers": [[f"good {i}", f"bad {i}"] for i in range(n)],
                "preference": [i % 2 for i in range(n)],
            }
        ).to_parquet(str(pairs / f"{split}.parquet"))
    gens = root / "gold_labelled_gens.jsonl"
    with gens.open("w") as f:
        for p in range(3):
            row = {"instruction": f"g{p}", "input": "", "answers": [f"{p}-{a}" for a in range(5)]}
            row["gold_scores"] = [float(p * 10 + a) for a in range(5)]
            f.write(json.dumps(row) + "\n")
    return root


def test_alpaca_farm_instructions_and_human_preferences_from_local_copy(published, tmp_path):
    import hydra

    farm = published / "alpaca_farm"
    cfg = compose(
        "sft", ["data=alpaca_human_preference", f"data.instructions_path={farm}", f"data.path={farm}"]
    )
    data = hydra.utils.instantiate(cfg.data)
    assert [len(data.instructions(s)) for s in ("sft", "preference", "unlabeled", "val")] == [40, 12, 6, 10]
    assert data.instructions("val")[3] == {"instruction": "val task 3.", "input": "", "output": "answer 3"}
    train, val = data.preferences("train"), data.preferences("val")
    assert (len(train), len(val)) == (19, 1)
    assert data.preferences("validation")["instruction"] == [
        "q19"
    ]  # the name rmopt-rm asks for  # preference[:95%] and preference[95%:] of 20 rows
    assert train.column_names == ["instruction", "input", "answers", "preference"]
    # row i: answers [a_i, b_i]; human preference 2 when i % 3 == 0 -> index 1, else 0
    assert train[3] == {"instruction": "q3", "input": "", "answers": ["a3", "b3"], "preference": 1}
    assert train[4]["preference"] == 0
    assert val[0] == {"instruction": "q19", "input": "", "answers": ["a19", "b19"], "preference": 0}


def test_gold_labelled_pairs_and_gens_from_local_files(published):
    import hydra

    from rmopt.data.gold_gens import load_gold_gens

    farm = published / "alpaca_farm"
    cfg = compose(
        "sft",
        ["data=gold_labelled_gens", f"data.instructions_path={farm}", f"data.path={published / 'pairs'}"]
        + [f"data.gold_gens={published / 'gold_labelled_gens.jsonl'}"],
    )
    data = hydra.utils.instantiate(cfg.data)
    train, val = data.preferences("train"), data.preferences("val")  # val -> the `validation` file
    assert (len(train), len(val)) == (8, 4)
    assert val[3] == {
        "instruction": "validation 3",
        "input": "",
        "answers": ["good 3", "bad 3"],
        "preference": 1,
    }
    gens = data.gold_gens_dataset()
    assert gens.num_rows == 3 and gens[2]["gold_scores"] == [20.0, 21.0, 22.0, 23.0, 24.0]
    loaded = load_gold_gens(cfg.data.gold_gens, big_n=4)  # the BoN stage reads the same file
    assert (loaded.P, loaded.N) == (3, 4) and loaded.gold[1].tolist() == [10.0, 11.0, 12.0, 13.0]


def test_custom_data_set_with_column_map_and_sliced_splits(tmp_path, monkeypatch):
    import hydra

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with open("data/my_instructions.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n")
    with open("data/my_pairs.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"x{i}"}) + "\n")
    data = hydra.utils.instantiate(compose("sft", ["data=custom"]).data)  # the example config as shipped
    sft, val = data.instructions("sft"), data.instructions("val")
    assert (len(sft), len(data.instructions("preference")), len(val)) == (16, 2, 2)
    assert val[1] == {"instruction": "p19", "input": "", "output": "r19"}
    pairs = data.preferences("train")
    assert data.preferences("validation")["answers"] == [["c19", "x19"]]
    assert len(pairs) == 19 and pairs[5] == {
        "instruction": "p5",
        "input": "",
        "answers": ["c5", "x5"],
        "preference": 0,
    }


def test_sft_step_on_pythia_stand_in_with_alpaca_farm_copy(pythia_like_dir, published, tmp_path):
    """The paper's SFT path with stand-ins: hub-style model folder + AlpacaFarm copy; saved as embed_out."""
    from rmopt.sft import train

    out = tmp_path / "sft"
    cfg = compose(
        "sft",
        [
            f"model.name_or_path={pythia_like_dir}",
            "model.tokenizer=null",
            "data=alpaca_farm",
            f"data.instructions_path={published / 'alpaca_farm'}",
            f"output_dir={out}",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "batch_size=8",
            "max_length=48",
            "optimizer.lr=1e-3",
            "logger=none",
            "sample_count=0",
            "trainer.enable_progress_bar=false",
        ],
        output_dir=tmp_path / "run",
    )
    train(cfg)
    history = json.loads((out / "sft_history.json").read_text())
    assert [h["step"] for h in history] == [0, 3] and history[1]["val_loss"] < history[0]["val_loss"]
    on_disk, start = _safetensors_keys(out), _safetensors_keys(pythia_like_dir)
    assert on_disk["embed_out.weight"].shape[0] == start["embed_out.weight"].shape[0] + 2
    assert not torch.equal(
        on_disk["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"],
        start["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"],
    )


# --------------------------------------------------------------------------------------------
# errors: one line, at once, never the network


def test_missing_column_names_column_and_data_set(published, tmp_path):
    from rmopt.data.sources import HubData

    bad = tmp_path / "no_output.json"
    bad.write_text(json.dumps([{"instruction": "a", "input": ""}]))
    with pytest.raises(RmoptError, match=r"data set '.*no_output.json:sft' has no column 'output'"):
        HubData(instructions_path=str(bad), instructions_subset=None).instructions("sft")
    with pytest.raises(RmoptError, match=r"has no column 'prompt' \(mapped to 'instruction'"):
        HubData(instructions_path=str(bad), instructions_columns={"instruction": "prompt"}).instructions(
            "sft"
        )
    with pytest.raises(RmoptError, match="has no column 'output_1'"):
        HubData(path=str(published / "pairs"), preference_kind="alpaca_human").preferences("train")
    human = tmp_path / "human.jsonl"
    human.write_text(
        json.dumps({"instruction": "q", "input": "", "output_1": "a", "output_2": "b", "preference": 0})
    )
    with pytest.raises(RmoptError, match="row 0 has preference 0; expected 1 or 2"):
        HubData(path=str(human), preference_kind="alpaca_human").preferences("train")
    with pytest.raises(RmoptError, match="has no split 'test'"):
        HubData(path=str(published / "pairs")).preferences("test[:3]")


def test_select_split_slices_and_aliases():
    import datasets

    from rmopt.data.sources import select_split

    ds = datasets.Dataset.from_dict({"x": list(range(10))})
    assert select_split(ds, "anything[:30%]", "d")["x"] == [0, 1, 2]
    assert select_split(ds, "train[-2:]", "d")["x"] == [8, 9]
    assert select_split(ds, "train[4:6]", "d")["x"] == [4, 5]
    both = datasets.DatasetDict({"train": ds, "validation": ds.select([7])})
    assert select_split(both, "val", "d")["x"] == [7]
    with pytest.raises(RmoptError, match="is not a name"):
        select_split(both, "train[1:2:3]", "d")


@pytest.mark.parametrize(
    "path", ["./nope.json", "/no/such/file.parquet", "a/b/c", "~/no-such-rmopt-data", "mine.jsonl", "here/x"]
)
def test_missing_local_paths_are_not_sent_to_the_hub(path, tmp_path, monkeypatch):
    from rmopt.data.sources import load_local_or_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()  # "here/x": its first component is a local folder
    monkeypatch.setattr("rmopt.hub.hub_reachable", lambda: pytest.fail("asked the hub"))
    with pytest.raises(RmoptError, match=f"data path '{path}' does not exist"):
        load_local_or_hub(path)


def test_hub_name_offline_is_one_line_and_quick():
    from rmopt.data.sources import load_local_or_hub
    from rmopt.hub import hub_reachable
    from rmopt.models import ModelSource

    hub_reachable.cache_clear()
    assert not hub_reachable()  # HF_HUB_OFFLINE=1 (conftest)
    start = time.monotonic()
    with pytest.raises(RmoptError) as e:
        load_local_or_hub("rmopt-test/no-such-set", split="train")
    assert "'rmopt-test/no-such-set' is not a local file or folder" in str(e.value) and "\n" not in str(
        e.value
    )
    with pytest.raises(RmoptError) as e:
        ModelSource(name_or_path="rmopt-test/no-such-model").load_tokenizer()
    assert "'rmopt-test/no-such-model' is not a local folder" in str(e.value) and "\n" not in str(e.value)
    assert time.monotonic() - start < 10


def test_unreachable_hub_is_never_asked(monkeypatch):
    """No DNS (hub_reachable false) and not in offline mode: error at once, datasets never called."""
    import datasets

    from rmopt.data.sources import load_local_or_hub
    from rmopt.hub import from_pretrained

    monkeypatch.setattr("rmopt.hub.hub_reachable", lambda: False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("tried the network"))
    with pytest.raises(RmoptError, match="hub is unreachable"):
        load_local_or_hub("tlc4418/gold_labelled_gens")
    calls = []

    def loader(name, **kwargs):
        calls.append(kwargs)
        raise OSError("not in the cache")

    with pytest.raises(RmoptError, match="could not be fetched"):
        from_pretrained(loader, "tlc4418/pythia_70m_sft", "model")
    assert calls == [{"local_files_only": True}]  # the cache only: no download, no retries


def test_published_model_and_data_configs_name_the_published_sets():
    import hydra

    expected = {
        "pythia-70m-sft": "tlc4418/pythia_70m_sft",
        "pythia-1.4b-sft": "tlc4418/pythia_1.4b_sft_policy",
        "pythia-70m": "EleutherAI/pythia-70m",
        "pythia-1.4b": "EleutherAI/pythia-1.4b",
    }
    for option, name in expected.items():
        assert compose("sft", [f"model={option}"]).model.name_or_path == name
    data = {
        o: hydra.utils.instantiate(compose("sft", [f"data={o}"]).data)
        for o in ("alpaca_farm", "alpaca_human_preference", "gold_labelled_pairs", "gold_labelled_gens")
    }
    assert data["gold_labelled_pairs"].path == "tlc4418/1.4b-policy_preference_data_gold_labelled"
    assert data["gold_labelled_gens"].gold_gens == "tlc4418/gold_labelled_gens"
    assert (data["alpaca_human_preference"].path, data["alpaca_human_preference"].preference_subset) == (
        "tatsu-lab/alpaca_farm",
        "alpaca_human_preference",
    )
    assert all(d.instructions_path == "tatsu-lab/alpaca_farm" for d in data.values())


def test_gold_rm_stand_in_with_its_own_tokenizer_scores_published_pairs(pythia_like_dir, published, tmp_path):
    """A gold RM folder (different tokenizer from the policy's) scores the pairs' answers as text."""
    import hydra
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForSequenceClassification

    from rmopt.data.sources import HubData
    from rmopt.gold import alpaca_prompt

    gold_tok = AutoTokenizer.from_pretrained(pythia_like_dir)
    torch.manual_seed(1)
    config = GPTNeoXConfig(vocab_size=len(gold_tok), num_labels=1, pad_token_id=1, **TINY)
    GPTNeoXForSequenceClassification(config).save_pretrained(tmp_path / "gold")
    gold_tok.save_pretrained(tmp_path / "gold")
    gold = hydra.utils.instantiate(
        compose(
            "bon",
            [
                "gold=alpaca_farm",
                f"gold.name_or_path={tmp_path / 'gold'}",
                "gold.device=cpu",
                "gold.dtype=float32",
            ],
        ).gold
    )
    pairs = HubData(path=str(published / "pairs")).preferences("val")
    instructions = [r["instruction"] for r in pairs for _ in range(2)]
    answers = [a for r in pairs for a in r["answers"]]
    scores = gold.score(instructions, [""] * len(answers), answers, batch_size=3)
    model = GPTNeoXForSequenceClassification.from_pretrained(tmp_path / "gold").eval()
    for j in (0, 5):  # one at a time, no padding: the score at the last token of the gold's own text
        text = alpaca_prompt(instructions[j]) + answers[j]  # no EOS (end_sequence_with_eos=False), at most 512
        ids = gold_tok(text, return_tensors="pt")["input_ids"][:, :512]
        with torch.no_grad():
            assert scores[j] == pytest.approx(model(ids).logits[0, 0].item(), abs=1e-5)
