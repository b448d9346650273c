"""Peer: TRL SFTTrainer (prompt/completion rows, loss on the completion); prints {"samples_per_s", ...} as JSON."""

import json
import sys

import torch

torch.set_num_threads(1)

import datasets  # noqa: E402
from _timer import StepTimer  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

a = json.loads(sys.argv[1])
tok = AutoTokenizer.from_pretrained(a["lm_dir"])
model = AutoModelForCausalLM.from_pretrained(a["lm_dir"])
rows = json.load(open(a["sft_json"]))
ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
cfg = SFTConfig(
    output_dir=a["out"], per_device_train_batch_size=a["batch_size"], max_length=a["max_length"],
    max_steps=a["warmup"] + a["steps"], bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
    report_to=[], save_strategy="no", logging_steps=10_000, dataloader_num_workers=0, learning_rate=1e-4,
    lr_scheduler_type="constant", warmup_steps=0, seed=1, packing=False, completion_only_loss=True,
    disable_tqdm=True,
)
timer = StepTimer(a["warmup"])
trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[timer])
lengths = [len(r["input_ids"]) for r in trainer.train_dataset]
trainer.train()
print(json.dumps({"samples_per_s": timer.steps_per_s() * a["batch_size"], "tokens_per_sample": sum(lengths) / len(lengths)}))
