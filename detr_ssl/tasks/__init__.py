"""Training objectives, by name. Adding a pretext task = one module here plus one import below."""

from __future__ import annotations

from collections.abc import Callable

from detr_ssl.errors import ConfigError
from detr_ssl.tasks.base import PretextTask, Task

TASKS: dict[str, type[PretextTask]] = {}


def register_task(name: str) -> Callable[[type[PretextTask]], type[PretextTask]]:
    def register(cls: type[PretextTask]) -> type[PretextTask]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        cls.name = name
        TASKS[name] = cls
        return cls

    return register


def get_task(name: str) -> type[PretextTask]:
    """The task class called ``name``; an unknown name is a ConfigError listing the choices."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    return TASKS[name]


# Registration happens on import.
from detr_ssl.tasks import densecl, detreg, pairdetr, swav, updetr  # noqa: E402,F401

__all__ = ["TASKS", "PretextTask", "Task", "get_task", "register_task"]
