"""The built-in toy world: synthetic tasks, a gold reward, a local tokenizer and tiny models."""

from rmopt.toy.world import ToyGoldReward, generate_dataset, gold_score, parse_task

__all__ = ["ToyGoldReward", "gold_score", "generate_dataset", "parse_task"]
