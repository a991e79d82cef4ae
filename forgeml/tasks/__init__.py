"""Tasks: one kind of problem each, and the registry every verb asks.

    task_for_config(config)   the task that trains a config (train, validate)
    task_for_run(run_dir)     the task of a finished run (load, evaluate, predict, serve, export)

A task is one folder under forgeml/tasks/ plus one line in TASKS below; forgeml/tasks/base.py
says what a task answers, docs/adding-a-task.md how to add one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgeml.errors import ConfigError, ForgeError
from forgeml.run_dir import read_manifest
from forgeml.tasks.base import Task
from forgeml.tasks.language_modeling.task import LanguageModelingTask
from forgeml.tasks.table.task import TableTask

TASKS: tuple[Task, ...] = (LanguageModelingTask(), TableTask())


def task_for_config(config: Any) -> Task:
    """The task that trains `config` (the first in TASKS that accepts it)."""
    for task in TASKS:
        if task.accepts(config):
            return task
    raise ConfigError(  # the config validator rules these combinations out first
        f"no task trains model.name={config.model.name} on this data; see docs/adding-a-task.md"
    )


def task_for_run(run: str | Path | dict[str, Any]) -> Task:
    """The task of a finished run, from its forgeml.json (or that manifest as a dict)."""
    manifest = run if isinstance(run, dict) else read_manifest(run)
    kind = manifest.get("task")
    for task in TASKS:
        if kind in task.run_kinds:
            return task
    known = sorted(k for task in TASKS for k in task.run_kinds)
    raise ForgeError(
        f"the run's forgeml.json names task {kind!r}, which this forgeml does not know "
        f"(it knows: {', '.join(known)}); use the forgeml version that trained it"
    )


__all__ = ["TASKS", "Task", "task_for_config", "task_for_run"]
