"""The task registry and the CLI built from it: names resolve lazily, unknown names list the choices, each
task's --help shows its own options, and nothing imports every task."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import fields

import pytest

from detr_ssl.cli.pretrain import parse_pretrain_args
from detr_ssl.errors import ConfigError
from detr_ssl.tasks import all_tasks, get_task, register_task
from detr_ssl.tasks.base import PretextTask


def test_published_tasks_are_registered() -> None:
    tasks = all_tasks()
    assert {"updetr", "detreg", "pairdetr", "swav", "densecl"} <= set(tasks)
    assert all(get_task(name) is cls and cls.name == name for name, cls in tasks.items())


def test_unknown_task_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown task 'mae'.*detreg.*updetr"):
        get_task("mae")


def test_a_task_is_registered_by_the_module_of_its_name() -> None:
    with pytest.raises(ValueError, match="must be registered by detr_ssl/tasks/elsewhere.py"):
        register_task("elsewhere")(type("Stray", (PretextTask,), {}))


def test_each_task_config_has_exactly_its_own_option_groups() -> None:
    shared = {"task", "preset", "model_size", "backbone_init", "data", "optim", "run", "model"}
    groups = {name: {f.name for f in fields(parse_pretrain_args(["--task", name]))} - shared for name in all_tasks()}
    assert groups["densecl"] == {"crops", "densecl"}
    assert groups["swav"] == {"crops", "swav"}
    assert groups["detreg"] == {"detreg", "proposals", "loss"}
    assert groups["updetr"] == {"updetr", "loss"}
    assert groups["pairdetr"] == {"pair", "proposals", "loss"}


@pytest.mark.parametrize("name", ["densecl", "updetr"])
def test_task_help_lists_its_options_and_no_other_tasks(name: str) -> None:
    result = subprocess.run([sys.executable, "scripts/pretrain.py", "--task", name, "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    others = {"densecl": "--updetr.", "updetr": "--densecl."}
    assert f"--{name}." in result.stdout and others[name] not in result.stdout
    assert "--swav." not in result.stdout and "--teacher-checkpoint" not in result.stdout


def test_another_tasks_flag_is_rejected() -> None:
    with pytest.raises(SystemExit):
        parse_pretrain_args(["--task", "swav", "--densecl.queue-length", "8"])


def test_a_task_config_pickles() -> None:
    config = parse_pretrain_args(["--task", "densecl", "--densecl.queue-length", "8"])
    assert pickle.loads(pickle.dumps(config)) == config


def test_the_engine_imports_no_task_and_no_opencv() -> None:
    probe = ("import sys, detr_ssl.engine.trainer, detr_ssl.config, detr_ssl.tasks; "
             "print(sorted(m for m in sys.modules if m == 'cv2' or m.startswith('detr_ssl.tasks.')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['detr_ssl.tasks.base']"
