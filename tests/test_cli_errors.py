"""The command line's error contract: every override Hydra's grammar accepts passes, only what it
rejects gets the quoting hint (a form Hydra accepts), user errors are one line with exit code 1, and
a bug keeps its traceback."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from rmopt.errors import RmoptError, check_overrides, override_args, user_error
from tests.conftest import compose

DICT = 'data.preference_splits={train:"train[:100]",val:"validation[:10]"}'


def hydra_parse(arg: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([arg])[0]


@pytest.mark.parametrize(
    "overrides, check",
    [
        # a dict value (the example): not a string, and no hint
        (
            ["data=gold_labelled_pairs", DICT],
            lambda c: c.data.preference_splits == {"train": "train[:100]", "val": "validation[:10]"},
        ),
        (["optimizer.betas=[0.8,0.9]"], lambda c: list(c.optimizer.betas) == [0.8, 0.9]),
        (['output_dir="models/rm_seed{seed}"'], lambda c: c.output_dir == "models/rm_seed{seed}"),
        (["output_dir='it is {here}'"], lambda c: c.output_dir == "it is {here}"),
        (["output_dir=models/x\\{y\\}"], lambda c: c.output_dir == "models/x{y}"),
        (["output_dir=${paths.output_dir}/rm"], lambda c: c.output_dir.endswith("/rm")),
        (["output_dir=models/rm_${seed}", "seed=3"], lambda c: c.output_dir == "models/rm_3"),
        (["+extra={a:[1,2],b:{c:null}}"], lambda c: OmegaConf.to_container(c.extra) == {"a": [1, 2], "b": {"c": None}}),
        (["~warmup_steps"], lambda c: "warmup_steps" not in c),
        (["model=toy-small", "ensemble=multihead"], lambda c: c.ensemble.kind == "multihead"),
    ],
)
def test_valid_hydra_overrides_pass_and_compose(overrides, check, tmp_path):
    check_overrides(overrides)
    cfg = compose("rm", overrides, output_dir=tmp_path)
    OmegaConf.resolve(cfg)
    assert check(cfg), OmegaConf.to_yaml(cfg)


@pytest.mark.parametrize(
    "args",
    [
        ["objective=mean,wco", "seed=1,2,3"],  # sweeps
        ["model=choice(toy-tiny,toy-small)", "seed=range(1,4)"],
        ["logger=[csv,tensorboard]"],  # several options of one group
        ["model=${oc.env:MODEL,toy-tiny}"],  # an interpolation is not checked as an option
        ["-m", "--cfg", "job", "-cn", "rm", "--info", "defaults", "seed=1"],  # Hydra's flags and their values
    ],
)
def test_other_valid_command_lines_pass(args):
    check_overrides(args)


def test_flags_and_their_values_are_not_overrides():
    args = ["-m", "--cfg", "job", "x=1", "-cn", "rm", "--info", "defaults", "-i", "y=2", "--multirun", "--config-dir=/c"]
    assert override_args(args) == ["x=1", "y=2"]


@pytest.mark.parametrize(
    "arg, text",
    [
        ("proxy_rm_path=models/rm_seed{seed}", "models/rm_seed{seed}"),
        ("output_dir=a b{c}", "a b{c}"),
        ('x=a{b}c"d', 'a{b}c"d'),
        ("x=it's{a}", "it's{a}"),
        ("x=ab{c}\\", "ab{c}\\"),
        ("'proxy_rm_path=a{seed}'", "a{seed}"),  # quotes meant for a shell: the fix is still checked
    ],
)
def test_bare_braces_get_a_hint_that_hydra_accepts(arg, text):
    with pytest.raises(RmoptError, match="rejects it") as e:
        check_overrides([arg])
    message = str(e.value)
    assert "\n" not in message
    hint = message.split(" write ", 1)[1]
    (shell_arg,) = shlex.split(hint)  # one argument once a shell has read it
    assert hydra_parse(shell_arg).value() == text  # ... which Hydra reads as the text the user wrote
    check_overrides([shell_arg])


def test_the_sweep_form_of_the_hint_keeps_the_sweep():
    with pytest.raises(RmoptError) as e:
        check_overrides(["x=a,b{c}"])
    (shell_arg,) = shlex.split(str(e.value).split(" write ", 1)[1])
    assert [getattr(v, "text", v) for v in hydra_parse(shell_arg).value().list] == ["a", "b{c}"]


def test_an_argument_quoted_whole_where_no_shell_removed_the_quotes():
    with pytest.raises(RmoptError, match=r"pass proxy_rm_path=\"a\{seed\}\" as the argument"):
        check_overrides(["'proxy_rm_path=\"a{seed}\"'"])


@pytest.mark.parametrize(
    "arg",
    ["x={a:b{c}}", "x=[a{b}]", "x=choice(a{b})", "foo", "a b=c", "x=\"a\" b{c}"],
)
def test_what_quoting_does_not_fix_gets_no_quoting_hint(arg):
    # quoting a dict, list or function value would turn it into a string: only Hydra's reason and its docs
    with pytest.raises(RmoptError, match="override_grammar") as e:
        check_overrides([arg])
    assert " write " not in str(e.value)


def test_unknown_group_options_still_list_the_valid_ones():
    with pytest.raises(RmoptError, match="unknown model 'gpt5'; expected one of .*toy-tiny"):
        check_overrides(["model=gpt5"])
    with pytest.raises(RmoptError, match="unknown logger 'nope'"):
        check_overrides(["logger=[csv,nope]"])
    with pytest.raises(RmoptError, match="unknown model 'gpt5'"):
        check_overrides(["model=choice(toy-tiny,gpt5)"])


# ------------------------------------------------------------------ what counts as a user error


def test_only_rmopt_and_config_errors_are_user_errors():
    import hydra
    from hydra.errors import ConfigCompositionException

    assert user_error(RmoptError("x")) is not None
    assert user_error(ConfigCompositionException("Could not override 'x'")) is not None
    assert user_error(ValueError("a bug")) is None
    assert user_error(FileNotFoundError("a bug")) is None
    # instantiate wraps what the built object raises: an RmoptError (a bad objective.weight) is the user's ...
    with pytest.raises(Exception) as e:
        hydra.utils.instantiate({"_target_": "rmopt.objectives.Objective", "name": "uwo", "weight": -1})
    assert isinstance(user_error(e.value), RmoptError) and "weight" in str(user_error(e.value))
    # ... a ValueError is a bug
    with pytest.raises(Exception) as e:
        hydra.utils.instantiate({"_target_": "rmopt.data.sampler.ResumableSampler", "n": 10, "batch_size": 2,
                                 "seed": 0, "drop_last": True, "num_replicas": 2, "rank": 5})
    assert user_error(e.value) is None


def run_sft_main(monkeypatch, capsys, tmp_path, raise_in_task, args=()):
    """rmopt-sft's console entry point in-process, its task replaced by one that raises."""
    from hydra.core.global_hydra import GlobalHydra

    import rmopt.sft

    def task(cfg):
        raise raise_in_task

    monkeypatch.setattr(rmopt.sft, "train", task)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rmopt-sft", "logger=none", "hydra.run.dir=run", "output_dir=out", *args])
    monkeypatch.delenv("RMOPT_TRACEBACK", raising=False)
    GlobalHydra.instance().clear()
    try:
        rmopt.sft.main()
    finally:
        GlobalHydra.instance().clear()


def test_a_value_error_inside_a_task_keeps_its_traceback(monkeypatch, capsys, tmp_path):
    with pytest.raises(ValueError, match="an internal bug"):
        run_sft_main(monkeypatch, capsys, tmp_path, ValueError("an internal bug"))
    with pytest.raises(FileNotFoundError):
        run_sft_main(monkeypatch, capsys, tmp_path, FileNotFoundError("missing internal file"))


def test_an_rmopt_error_inside_a_task_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_sft_main(monkeypatch, capsys, tmp_path, RmoptError("data path 'x' does not exist\nsecond line"))
    assert e.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == ["error: data path 'x' does not exist"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["seed=abc"], "error: seed='abc': expected a number (the default is 0)"),
        (["optimizer.lr=fast"], "error: optimizer.lr='fast': expected a number"),
        (["resume=maybe"], "error: resume='maybe': expected true or false"),
        (["model=gpt5"], "error: unknown model 'gpt5'"),
        (["output_dir=x{seed}"], "error: output_dir=x{seed}: Hydra's override grammar rejects it"),
    ],
)
def test_bad_values_of_the_command_line_are_one_line_and_exit_1(args, message, monkeypatch, capsys, tmp_path):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_sft_main(monkeypatch, capsys, tmp_path, AssertionError("the task must not run"), args)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_an_unset_value_the_config_asks_for_is_one_line():
    from omegaconf.errors import MissingMandatoryValue

    cfg = OmegaConf.create({"proxy_rm_path": "???"})
    with pytest.raises(MissingMandatoryValue) as e:
        cfg.proxy_rm_path  # noqa: B018
    assert user_error(e.value) is e.value


@pytest.mark.parametrize(
    "arg, message",
    [
        ("proxy_rm_path=models/rm_seed{seed}", "write 'proxy_rm_path=\"models/rm_seed{seed}\"'"),
        ("model=gpt5", "unknown model 'gpt5'"),
    ],
)
def test_rmopt_bon_bad_override_exits_1(arg, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rmopt.bon_pipeline", arg, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("kl_estimator=k9", "kl_estimator='k9' is not valid; expected one of k1, k2, k3"),
        ("eval_samples=0", "eval_samples=0 is not valid"),
        ("kl_target=0", "kl_target=0"),
        ("kl_horizon=-5", "kl_horizon=-5"),
    ],
)
def test_bad_ppo_settings_are_one_line_errors_before_any_model_loads(override, message):
    from rmopt.modules.ppo import kl_controller
    from rmopt.ppo import settings_from

    cfg = compose("ppo", ["experiment=toy", "kl_controller=adaptive", override])
    with pytest.raises(RmoptError, match=re.escape(message)):
        kl_controller(settings_from(cfg))
