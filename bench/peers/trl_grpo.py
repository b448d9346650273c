"""Peer: TRL's GRPOTrainer with the bench's policy and reward model (TRL's defaults: no KL term); prints JSON.

One optimizer step per generation batch (``steps_per_generation=1``) of ``batch_size`` completions,
``group_size`` per prompt, reused for ``epochs`` steps (``num_iterations``); answers/s = steps/s x
batch / epochs.
"""

import json
import sys

import torch

torch.set_num_threads(1)

import datasets  # noqa: E402
from _timer import StepTimer  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

a = json.loads(sys.argv[1])
tok = AutoTokenizer.from_pretrained(a["lm_dir"], padding_side="left")
policy = AutoModelForCausalLM.from_pretrained(a["lm_dir"])
reward = AutoModelForSequenceClassification.from_pretrained(a["rm_dir"])
reward_tok = AutoTokenizer.from_pretrained(a["rm_dir"])
prompts = [p["prompt"] for p in json.load(open(a["prompts_json"]))]
B, G, E = a["batch_size"], a["group_size"], a["epochs"]
steps = (a["warmup"] + a["steps"]) * E
ds = datasets.Dataset.from_dict({"prompt": prompts})
cfg = GRPOConfig(
    output_dir=a["out"], per_device_train_batch_size=B, gradient_accumulation_steps=1, steps_per_generation=1,
    num_generations=G, num_iterations=E, max_completion_length=a["new_tokens"], max_steps=steps, temperature=1.0,
    beta=0.0, learning_rate=1e-5, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to=[],
    save_strategy="no", logging_steps=10_000, seed=1, dataloader_num_workers=0, disable_tqdm=True,
)
timer = StepTimer(a["warmup"] * E)
trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                      reward_processing_classes=reward_tok, callbacks=[timer])
trainer.train()
print(json.dumps({"samples_per_s": timer.steps_per_s() * B / E, "updates": len(timer.times)}))
