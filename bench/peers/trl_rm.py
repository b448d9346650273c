"""Peer: TRL RewardTrainer on the bench's pairs; prints {"pairs_per_s", "tokens_per_pair"} as JSON."""

import json
import sys

import torch

torch.set_num_threads(1)

import datasets  # noqa: E402
from _timer import StepTimer  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from trl import RewardConfig, RewardTrainer  # noqa: E402

a = json.loads(sys.argv[1])
tok = AutoTokenizer.from_pretrained(a["rm_dir"])
model = AutoModelForSequenceClassification.from_pretrained(a["rm_dir"])
pairs = datasets.load_from_disk(a["pairs_dir"])["train"]
rows = [
    {"chosen": p + ans[pref] + a["eos"], "rejected": p + ans[1 - pref] + a["eos"]}
    for p, ans, pref in zip(a["prompts"], pairs["answers"], pairs["preference"], strict=True)
]
ds = datasets.Dataset.from_list(rows)
steps = a["warmup"] + a["steps"]
cfg = RewardConfig(
    output_dir=a["out"], per_device_train_batch_size=a["batch_size"], max_length=a["max_length"], max_steps=steps,
    bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to=[], save_strategy="no",
    logging_steps=10_000, dataloader_num_workers=0, learning_rate=1e-4, lr_scheduler_type="constant",
    warmup_steps=0, seed=1, disable_tqdm=True,
)
timer = StepTimer(a["warmup"])
trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[timer])
kept = len(trainer.train_dataset)
lengths = [len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset]
trainer.train()
print(json.dumps({"pairs_per_s": timer.steps_per_s() * a["batch_size"], "kept_pairs": kept,
                  "tokens_per_pair": sum(lengths) / len(lengths)}))
