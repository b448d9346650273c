"""The built-in toy worlds: synthetic tasks, a gold reward, a local tokenizer and tiny models.

Two worlds share one interface (``parse_task``, ``gold_score``, ``ToyGoldReward``, ``generate_dataset``,
``prompt_part``, ``correct_answer``, ``corpus``), chosen by ``data.world``:

- ``graded`` (:mod:`rmopt.toy.graded`, the default): lists of 5-12 items under constraints, a gold
  with partial credit, thousands of prompts;
- ``simple`` (:mod:`rmopt.toy.world`): the first world, short answers scored 1 / partial / -1.
"""

from __future__ import annotations

import importlib

from rmopt.errors import RmoptError

WORLDS = {"graded": "rmopt.toy.graded", "simple": "rmopt.toy.world"}
DEFAULT_WORLD = "graded"
VOCAB_SIZES = {"graded": 1024, "simple": 512}  # the toy tokenizer's vocabulary: whole words of each world


def get_world(name: str = DEFAULT_WORLD):
    """The module of toy world ``name``."""
    if name not in WORLDS:
        raise RmoptError(f"toy world {name!r} is unknown; expected one of {sorted(WORLDS)}")
    return importlib.import_module(WORLDS[name])


class ToyGoldReward:
    """The exact gold reward of toy world ``world`` (``gold=toy``; ``conf/gold/toy.yaml`` follows ``data.world``)."""

    def __init__(self, world: str = DEFAULT_WORLD):
        self._gold = get_world(world).ToyGoldReward()
        self.name = self._gold.name

    def score(self, instructions, inputs, answers, batch_size: int | None = None):
        return self._gold.score(instructions, inputs, answers, batch_size=batch_size)
