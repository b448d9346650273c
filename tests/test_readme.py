"""Every rmopt command the README shows composes as written (no typo'd option or key goes unnoticed)."""

import re
import shlex
from pathlib import Path

import pytest
from conftest import compose
from omegaconf import OmegaConf

from rmopt.errors import check_overrides

README = Path(__file__).resolve().parent.parent / "README.md"
ENTRY = {"rmopt-sft": "sft", "rmopt-pairs": "pairs", "rmopt-rm": "rm", "rmopt-bon": "bon", "rmopt-ppo": "ppo", "rmopt-ppo-gold": "ppo_gold",
         "rmopt-rl": "rl", "rmopt-warm": "warm"}


def readme_commands() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("$ "):
                line = line[2:]
            if line.split(" ", 1)[0] in ENTRY:
                commands.append(line)
    return commands


def test_readme_shows_every_stage():
    shown = {c.split()[0] for c in readme_commands()}
    assert shown == set(ENTRY)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_composes(command, tmp_path):
    script, *args = shlex.split(command)
    args = [a for a in args if a != "-m"]
    if any("gpt5" in a for a in args):  # the README's example of a bad option
        with pytest.raises(Exception, match="unknown model"):
            check_overrides(args)
        return
    check_overrides(args)
    # a sweep value a,b,c composes as its first choice
    first = []
    for a in args:
        key, _, value = a.partition("=")
        if "," in value and not value.startswith(("[", "'", '"')) and "{" not in value:
            value = value.split(",")[0]
        first.append(f"{key}={value}")
    cfg = compose(ENTRY[script], first, output_dir=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)
