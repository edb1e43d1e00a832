"""Pretext tasks, by name: the task called ``X`` is the class that ``detr_ssl/tasks/X.py`` registers.

Adding a pretext = adding that module (its dataset, model and loss; a reusable loss may live in
detr_ssl/losses) and, for its command line, ``detr_ssl/tasks/options/X.py``: the task's option groups and
preset defaults, without torch, so that ``scripts/pretrain.py --task X --help`` answers without importing
the model code. The task class derives from that options class. (A task without an options module still
works: its own class is then its command line, imported in full.)

Modules are imported when their task is asked for, so importing the engine does not import every task
(nor what they need, e.g. OpenCV for selective search), and this package imports no torch itself.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any, TypeVar

from detr_ssl.errors import ConfigError

if TYPE_CHECKING:
    from detr_ssl.config import PretextOptions
    from detr_ssl.tasks.base import PretextTask, Task

C = TypeVar("C", bound=type)

TASKS: dict[str, type[PretextTask]] = {}
"""The tasks registered so far (a module registers its task when it is imported); see :func:`all_tasks`."""

OPTIONS: dict[str, type[PretextOptions]] = {}
"""The options classes registered so far (``detr_ssl/tasks/options/<name>.py``); see :func:`task_options`."""


def _register(registry: dict[str, Any], name: str, folder: str) -> Callable[[C], C]:
    """A class decorator adding the class to ``registry`` as ``name``, from ``folder/<name>.py`` only."""

    def register(cls: C) -> C:
        module = cls.__module__.rpartition(".")[2]
        if module != name:
            raise ValueError(f"task {name!r} must be registered by {folder}/{name}.py, not {cls.__module__}")
        if name in registry:
            raise ValueError(f"task {name!r} is registered twice")
        cls.name = name
        registry[name] = cls
        return cls

    return register


def register_task(name: str) -> Callable[[C], C]:
    """Registers the task class of ``detr_ssl/tasks/<name>.py``. When the task has an options module, the
    class must derive from its options class (one command line per task)."""
    register = _register(TASKS, name, "detr_ssl/tasks")

    def check_and_register(cls: C) -> C:
        if _options_module_exists(name):
            options = task_options(name)
            if not issubclass(cls, options):
                raise ValueError(f"task {name!r}: {cls.__name__} must derive from {options.__name__} "
                                 f"(detr_ssl/tasks/options/{name}.py)")
        return register(cls)

    return check_and_register


def register_options(name: str) -> Callable[[C], C]:
    """Registers the options class of ``detr_ssl/tasks/options/<name>.py`` (see :func:`task_options`)."""
    return _register(OPTIONS, name, "detr_ssl/tasks/options")


def _has_module(paths: list[str], name: str) -> bool:
    return name.isidentifier() and any(m.name == name for m in pkgutil.iter_modules(paths))


def _options_module_exists(name: str) -> bool:
    return _has_module(import_module(f"{__name__}.options").__path__, name)


def all_tasks() -> dict[str, type[PretextTask]]:
    """Every task, by name (imports every module of this package)."""
    for module in pkgutil.iter_modules(__path__):
        import_module(f"{__name__}.{module.name}")
    return dict(sorted(TASKS.items()))


def get_task(name: str) -> type[PretextTask]:
    """The task called ``name``; an unknown name is a ConfigError listing the choices."""
    if name not in TASKS and _has_module(__path__, name):
        import_module(f"{__name__}.{name}")
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(all_tasks())}")
    return TASKS[name]


def task_options(name: str) -> type[PretextOptions]:
    """The command line of the task called ``name`` (its option groups and preset defaults): its options
    class, imported without the task's model code, or else the task itself; unknown names as :func:`get_task`."""
    if name not in OPTIONS and _options_module_exists(name):
        import_module(f"{__name__}.options.{name}")
    return OPTIONS[name] if name in OPTIONS else get_task(name)


def __getattr__(attr: str) -> Any:
    """``PretrainConfig_<task>``: a task's config class, rebuilt by name when a pickled config is loaded;
    ``PretextTask`` and ``Task``, imported on first use (they import torch)."""
    prefix = "PretrainConfig_"
    if attr.startswith(prefix):
        return task_options(attr.removeprefix(prefix)).config_class()
    if attr in ("PretextTask", "Task"):
        return getattr(import_module(f"{__name__}.base"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["OPTIONS", "TASKS", "PretextTask", "Task", "all_tasks", "get_task", "register_options", "register_task",
           "task_options"]
