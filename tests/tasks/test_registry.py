"""The task registry: names resolve, unknown names list the choices, every task trains a step."""

from __future__ import annotations

import pytest

from detr_ssl.errors import ConfigError
from detr_ssl.tasks import TASKS, get_task


def test_published_tasks_are_registered() -> None:
    assert {"updetr", "detreg", "pairdetr"} <= set(TASKS)
    assert all(get_task(name).name == name for name in TASKS)


def test_unknown_task_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown task 'mae'.*detreg.*updetr"):
        get_task("mae")
