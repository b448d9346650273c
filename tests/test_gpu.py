"""On a CUDA GPU only (skipped elsewhere; `make test-gpu`): the GPU trainer configs (bf16 mixed precision,
FSDP on one device) through the stages' own train functions, the padding-free forward and the hand-written
decode steps on CUDA, and the
paper's shapes with random weights (tests/paper_shapes.py: Pythia-70M reward models, a Pythia-1.4B policy,
a LLaMA-7B-shaped gold RM in bf16) through one RM step, one PPO step, best-of-n and gold scoring, each
printing its time, throughput and peak GPU memory (`paper-shapes ...` lines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose, save_stand_in_rms

from rmopt.errors import RmoptError

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TINY_ARGS = [f"model.config.{k}={v}" for k, v in TINY.items()]
QUIET = ["logger=csv", "trainer.enable_progress_bar=false"]


def weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def val_losses(run_dir: Path) -> list[float]:
    """The val/loss column of the CSV logger's metrics file under ``run_dir``."""
    import csv

    (metrics,) = list(run_dir.rglob("metrics.csv"))
    with open(metrics) as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_forward_on_cuda_matches_transformers(dtype):
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    from rmopt.data.collate import pad, padding_mask
    from rmopt.ensemble import last_token_scores

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=128, rotary_pct=0.25, pad_token_id=0)
    model = GPTNeoXForSequenceClassification(config).cuda().to(dtype).eval()
    seqs = [torch.randint(1, 64, (n,)).tolist() for n in (7, 30, 1, 60)]  # plain (<= 48) and fused (60) widths
    for rows in (seqs[:3], seqs):
        ids, mask = pad(rows, 0).cuda(), padding_mask(rows).cuda()
        with torch.no_grad():
            ours = last_token_scores(model, ids, mask).float()
            alone = torch.cat([model(input_ids=torch.tensor([s], device="cuda")).logits for s in rows]).float()
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        assert torch.allclose(ours, alone, atol=tol, rtol=tol), (ours - alone).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prompts", [[[5, 6, 7, 8], [9], [10, 11]], [[5, 6, 7], [8, 9, 10]]])  # padded, and not
def test_hand_written_decode_steps_on_cuda_give_the_models_logits(dtype, prompts):
    """rmopt/decode.py on CUDA: each step's logits against the model's own cached forward (bit for bit on CPU;
    here reported, and required equal up to the dtype's rounding)."""
    from test_decode import padded, tiny_neox

    from rmopt.decode import CachedForward, NeoXDecoder, decoder_for

    model = tiny_neox().cuda().to(dtype)
    fast, reference = decoder_for(model), CachedForward(model)
    assert isinstance(fast, NeoXDecoder)
    ids, mask, pos = (t.cuda() for t in padded(prompts))
    with torch.inference_mode():
        got, want = fast.prefill(ids, mask, pos, 5), reference.prefill(ids, mask, pos, 5)
        worst = float((got.float() - want.float()).abs().max())
        for _ in range(5):
            step = want.float().argmax(-1, keepdim=True)
            mask, pos = torch.cat([mask, torch.ones_like(step)], 1), pos[:, -1:] + 1
            got, want = fast.step(step, mask, pos), reference.step(step, mask, pos)
            worst = max(worst, float((got.float() - want.float()).abs().max()))
    print(f"decode-on-cuda {dtype} padded={len(set(map(len, prompts))) > 1} max |diff| {worst:.3g}")
    assert worst <= (1e-5 if dtype == torch.float32 else 5e-2)


def test_sft_rm_ppo_on_one_gpu_in_bf16(tmp_path, pairs_dir):
    """trainer=gpu (bf16-mixed) for each training stage: finite, learning, and the saved folders load on CPU."""
    from rmopt.models import ModelSource
    from rmopt.ppo import train as ppo_train
    from rmopt.rm import train as rm_train
    from rmopt.sft import train as sft_train

    sft = tmp_path / "sft"
    sft_train(compose("sft", ["experiment=toy", "trainer=gpu", *QUIET, *TINY_ARGS, "data.sizes.sft=512",
                              "data.sizes.val=64", "batch_size=32", "trainer.max_steps=120",
                              "trainer.val_check_interval=40", "sample_count=2", f"output_dir={sft}"],
                      output_dir=tmp_path / "run-sft"))
    losses = val_losses(tmp_path / "run-sft")
    assert len(losses) >= 4 and all(map(torch.isfinite, torch.tensor(losses)))  # steps 0, 40, 80, 120 (+ the end)
    assert losses[-1] < losses[0]
    source = ModelSource(name_or_path=str(sft))
    lm = source.load_causal_lm(source.load_tokenizer())
    assert lm.device.type == "cpu" and next(lm.parameters()).dtype == torch.float32

    rm = tmp_path / "rm"
    rm_train(compose("rm", ["experiment=toy", "trainer=gpu", *QUIET, f"model.name_or_path={sft}",
                            f"data.path={pairs_dir}", "batch_size=8", "trainer.max_steps=30", "trainer.max_epochs=-1",
                            "trainer.val_check_interval=15", f"output_dir={rm}"], output_dir=tmp_path / "run-rm"))
    (rm_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("rm_seed")]
    assert all(torch.isfinite(v.float()).all() for v in weights(rm_dir).values())

    rms = save_stand_in_rms(sft, tmp_path / "rms", seeds=(1, 2))
    ppo = tmp_path / "ppo"
    ppo_train(compose("ppo", ["experiment=toy", "trainer=gpu", *QUIET, f"model.name_or_path={sft}",
                              f'proxy_rm_path="{rms}/rm_seed{{seed}}"', "seeds=[1,2]", "objective=wco",
                              "rollout_batch_size=8", "minibatch_size=4", "ppo_epochs=2", "max_new_tokens=16",
                              "eval_prompts=6", "sample_every=0", "trainer.max_steps=6", "eval_every=3",
                              f"output_dir={ppo}"], output_dir=tmp_path / "run-ppo"))
    evals = sorted((ppo / "eval").glob("step_*.json"))
    assert len(evals) >= 2
    rows = json.loads(evals[-1].read_text())["rows"]
    assert rows and all(torch.isfinite(torch.tensor([r["proxy"], r["kl"]])).all() for r in rows)
    assert all(torch.isfinite(v.float()).all() for v in weights(ppo / "policy").values())


def test_fsdp_on_one_gpu_sft_resumes_and_ppo_says_no(tmp_path):
    from rmopt.ppo import train as ppo_train
    from rmopt.sft import train as sft_train

    common = ["experiment=toy", *QUIET, *TINY_ARGS, "data.sizes.sft=256", "data.sizes.val=32", "batch_size=16",
              "trainer.val_check_interval=10", "sample_count=0", "checkpoint_every=10"]
    cpu = tmp_path / "cpu"  # the keys and shapes a plain run saves
    sft_train(compose("sft", [*common, "trainer.max_steps=2", f"output_dir={cpu}"], output_dir=tmp_path / "run-cpu"))
    out = tmp_path / "sft"
    args = [*common, "trainer=fsdp", "trainer.devices=1", f"output_dir={out}"]
    sft_train(compose("sft", [*args, "trainer.max_steps=20"], output_dir=tmp_path / "run-a"))
    first, expected = weights(out), weights(cpu)
    assert {k: v.shape for k, v in first.items()} == {k: v.shape for k, v in expected.items()}
    assert (out / "checkpoints" / "last.ckpt").exists()
    sft_train(compose("sft", [*args, "trainer.max_steps=30", "ckpt_path=last"], output_dir=tmp_path / "run-b"))
    second = weights(out)
    assert any(not torch.equal(first[k], second[k]) for k in first)  # it trained on from step 20
    rms = save_stand_in_rms(out, tmp_path / "rms", seeds=(1,))
    ppo = compose("ppo", ["experiment=toy", "trainer=fsdp", "trainer.devices=1", *QUIET, f"model.name_or_path={out}",
                          f'proxy_rm_path="{rms}/rm_seed{{seed}}"', "seeds=[1]", f"output_dir={tmp_path / 'ppo'}"],
                  output_dir=tmp_path / "run-ppo")
    with pytest.raises(RmoptError, match="FSDPStrategy is not supported by rmopt-ppo.*expected trainer=cpu, gpu or ddp"):
        ppo_train(ppo)  # several updates per PPO step cannot run inside FSDP's one root forward


def test_sampling_a_cuda_model_with_a_cpu_generator():
    from rmopt.generation import generate_answers
    from rmopt.models import ModelSource

    source = ModelSource(config=dict(TINY), tokenizer="toy")
    tok = source.load_tokenizer()
    torch.manual_seed(0)
    model = source.load_causal_lm(tok).cuda().eval()
    prompts = (["Reverse the words.", "Count the vowels."], ["a b c", "banana"])
    runs = [generate_answers(model, tok, *prompts, max_new_tokens=8, temperature=1.0,
                             generator=torch.Generator().manual_seed(3)).texts for _ in range(2)]
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------------------------
# the paper's shapes, random weights: does each stage's step fit, and how fast is it (printed)


@pytest.fixture(scope="module")
def paper_rms(tmp_path_factory):
    import paper_shapes as ps

    return ps.save_rms(ps.PYTHIA_70M, tmp_path_factory.mktemp("paper-rms"))  # 5 members, as the paper's ensembles


def _show(capsys, name: str, out: dict) -> None:
    import paper_shapes as ps

    with capsys.disabled():  # shown whatever pytest's capture mode
        print("\n" + ps.line(name, out))


def test_paper_shapes_rm_step(capsys):
    import paper_shapes as ps

    out = ps.rm_step(ps.PYTHIA_70M, "cuda", pairs=32, length=520, steps=5)
    _show(capsys, "rm-step (Pythia-70M, 32 pairs of up to 520 tokens, bf16-mixed, AdamW)", out)
    assert out["losses_finite"] and out["peak_gib"] > 0


def test_paper_shapes_ppo_step(paper_rms, tmp_path, capsys):
    import paper_shapes as ps

    policy = ps.save_policy(ps.PYTHIA_1_4B, tmp_path / "policy-1.4b")
    out = ps.ppo_step(policy, paper_rms, (1, 2, 3, 4, 5), tmp_path, "gpu", rollouts=64, minibatch=16, new_tokens=256,
                      eval_prompts=8)
    _show(capsys, "ppo-step (Pythia-1.4B policy, 5 Pythia-70M RMs, 64 rollouts x 256 new tokens, 4 epochs)", out)
    assert out["finite"] and out["evals"] == 2 and out["answer_length"] > 0


def test_paper_shapes_bon_scoring(paper_rms, capsys):
    import paper_shapes as ps

    out = ps.bon_scoring(paper_rms, (1, 2, 3, 4, 5), "cuda", prompts=4, n=512, answer_tokens=256, batch_size=256)
    _show(capsys, "bon-scoring (5 Pythia-70M RMs in bf16, 4 prompts x 512 answers of up to 256 tokens)", out)
    assert out["finite"] and out["proxy_rises"]


def test_paper_shapes_gold_scoring(tmp_path, capsys):
    import paper_shapes as ps

    total = torch.cuda.get_device_properties(0).total_memory / ps.GIB
    if total < 40:
        pytest.skip(f"a LLaMA-7B-shaped gold RM in bf16 (13.5 GiB of weights) is not tried on {total:.0f} GiB")
    out = ps.gold_scoring(ps.LLAMA_7B, tmp_path, "cuda", texts=64, batch_size=16)
    _show(capsys, "gold-scoring (LLaMA-7B shape in bf16, gold=alpaca_farm's format, 64 texts, half cut at 512)", out)
    assert out["finite"] and out["max_tokens"] == 512 and out["params_b"] > 6.5
    assert out["batch_vs_alone"] < 0.1 * max(1.0, out["score_std"])  # left-padded batch vs one at a time, bf16
