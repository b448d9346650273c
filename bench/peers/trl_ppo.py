"""Peer: TRL's PPO trainer (trl.experimental.ppo, 0.2x) with the bench's policy and reward model; prints JSON."""

import json
import sys

import torch

torch.set_num_threads(1)

import datasets  # noqa: E402
from _timer import StepTimer  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

try:
    from trl.experimental.ppo import PPOConfig, PPOTrainer
except ImportError:  # trl 0.2x before the move
    from trl import PPOConfig, PPOTrainer

a = json.loads(sys.argv[1])
tok = AutoTokenizer.from_pretrained(a["lm_dir"], padding_side="left")
policy = AutoModelForCausalLM.from_pretrained(a["lm_dir"])
ref = AutoModelForCausalLM.from_pretrained(a["lm_dir"])
value = AutoModelForSequenceClassification.from_pretrained(a["rm_dir"])
reward = AutoModelForSequenceClassification.from_pretrained(a["rm_dir"])
prompts = [p["prompt"] for p in json.load(open(a["prompts_json"]))]
ds = datasets.Dataset.from_dict({"input_ids": [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]})
steps, B = a["warmup"] + a["steps"], a["batch_size"]
cfg = PPOConfig(
    output_dir=a["out"], per_device_train_batch_size=B, gradient_accumulation_steps=1, num_mini_batches=1,
    num_ppo_epochs=a["epochs"], response_length=a["new_tokens"], total_episodes=B * steps,
    local_rollout_forward_batch_size=B, stop_token="eos", temperature=1.0, missing_eos_penalty=None, kl_coef=0.05,
    bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to=[], save_strategy="no",
    logging_steps=10_000, num_sample_generations=0, learning_rate=1e-5, seed=1, dataloader_num_workers=0,
    disable_tqdm=True,
)
timer = StepTimer(a["warmup"])
trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                     train_dataset=ds, value_model=value, callbacks=[timer])
trainer.train()
print(json.dumps({"samples_per_s": timer.steps_per_s() * B, "updates": len(timer.times)}))
