"""Evaluation, the pure part: task files, prompts and scoring (shared with the experts'
self-evaluation, training and reputation).  ``load_tasks``/``build_prompt``/``score`` are the stable
API.  The harness that asks a network and reports (runner, client, logs, report) is ``node.eval``."""

from .scoring import (
    EM_INSTRUCTION,
    F1_SOLVED,
    MC_INSTRUCTION,
    Score,
    build_prompt,
    extract_answer,
    extract_choice,
    normalize,
    score,
    token_f1,
)
from .tasks import (
    TASK_TYPES,
    TaskFileError,
    TaskItem,
    TaskSet,
    find_tasks_dir,
    load_task_dir,
    load_tasks,
)

__all__ = [
    "EM_INSTRUCTION", "F1_SOLVED", "MC_INSTRUCTION", "TASK_TYPES", "Score", "TaskFileError", "TaskItem",
    "TaskSet", "build_prompt", "extract_answer", "extract_choice", "find_tasks_dir", "load_task_dir", "load_tasks",
    "normalize", "score", "token_f1",
]
