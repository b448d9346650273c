"""``rmopt-rl``: RL against a proxy reward with ``algorithm=ppo|grpo|rloo`` (``python -m rmopt.rl``).

The same stage as ``rmopt-ppo`` (:mod:`rmopt.ppo`: proxies, objectives, run folder, eval files,
``results.json``, resume, ``rmopt-ppo-gold``); the config group ``algorithm`` picks how advantages are
formed (:mod:`rmopt.modules.ppo`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rmopt.errors import cli_errors
from rmopt.stage import CONFIG_PATH


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="rl")
def _main(cfg: DictConfig) -> float | None:
    from rmopt.ppo import train
    from rmopt.sweep import run_job

    metrics = run_job(train, cfg)
    return None if metrics is None else metrics.get("proxy_score", float("nan"))


main = cli_errors(_main)

if __name__ == "__main__":
    main()
