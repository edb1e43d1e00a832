"""Pretext tasks, by name: the task called ``X`` is the class that ``detr_ssl/tasks/X.py`` registers.

Adding a pretext = adding that one module (its options, dataset, model and loss; a reusable loss may live
in detr_ssl/losses). Modules are imported when their task is asked for, so importing the engine does not
import every task (nor what they need, e.g. OpenCV for selective search).
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from importlib import import_module
from typing import Any

from detr_ssl.errors import ConfigError
from detr_ssl.tasks.base import PretextTask, Task

TASKS: dict[str, type[PretextTask]] = {}
"""The tasks registered so far (a module registers its task when it is imported); see :func:`all_tasks`."""


def register_task(name: str) -> Callable[[type[PretextTask]], type[PretextTask]]:
    def register(cls: type[PretextTask]) -> type[PretextTask]:
        module = cls.__module__.rpartition(".")[2]
        if module != name:
            raise ValueError(f"task {name!r} must be registered by detr_ssl/tasks/{name}.py, not {cls.__module__}")
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        cls.name = name
        TASKS[name] = cls
        return cls

    return register


def all_tasks() -> dict[str, type[PretextTask]]:
    """Every task, by name (imports every module of this package)."""
    for module in pkgutil.iter_modules(__path__):
        import_module(f"{__name__}.{module.name}")
    return dict(sorted(TASKS.items()))


def get_task(name: str) -> type[PretextTask]:
    """The task called ``name``; an unknown name is a ConfigError listing the choices."""
    if name not in TASKS and name.isidentifier() and any(m.name == name for m in pkgutil.iter_modules(__path__)):
        import_module(f"{__name__}.{name}")
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(all_tasks())}")
    return TASKS[name]


def __getattr__(attr: str) -> Any:
    """``PretrainConfig_<task>``: a task's config class, rebuilt by name when a pickled config is loaded."""
    prefix = "PretrainConfig_"
    if attr.startswith(prefix):
        return get_task(attr.removeprefix(prefix)).config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["TASKS", "PretextTask", "Task", "all_tasks", "get_task", "register_task"]
