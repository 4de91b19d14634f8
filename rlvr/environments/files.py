"""Environments from rows: any JSONL file or ``datasets`` dataset plus a named verifier.

``python -m rlvr.train --env jsonl:problems.jsonl --verifier math`` trains on a file whose
rows have a ``prompt`` and a ``reference`` (other column names through ``prompt_key`` and
``reference_key``). A row that lacks a column, or has an empty prompt, is reported and
skipped; it never stops the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rlvr.environments.base import Environment, Task, in_test_split
from rlvr.rewards import Reward

logger = logging.getLogger(__name__)

__all__ = ["RowsEnvironment", "JSONLEnvironment", "DatasetEnvironment", "read_jsonl", "make_environment"]


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a line that is not a JSON object is reported and skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                logger.warning("%s:%d: skipped, not valid JSON (%s)", path, lineno, exc)
                continue
            if not isinstance(row, dict):
                logger.warning("%s:%d: skipped, a row must be a JSON object, got %s", path, lineno, type(row).__name__)
                continue
            rows.append(row)
    return rows


class RowsEnvironment(Environment):
    """Tasks from rows (dicts), graded by a verifier looked up by name.

    Args:
        rows: The rows.
        prompt_key: Column holding the prompt: text, or a list of chat messages.
        reference_key: Column holding the gold answer or tests.
        verifier: Name of a registered verifier (``python -m rlvr list`` shows them).
        verifier_kwargs: Options for the verifier.
        split_key: Column naming each row's split (``"train"``/``"test"``); if absent, rows
            are split by a stable hash of their prompt with ``test_fraction`` held out.
        test_fraction: Share of rows held out when there is no ``split_key``.
        instruction: Text appended to a plain-text prompt (e.g. asking for ``\\boxed{}``).
        system_prompt: Optional system message put before the user message.
        name: The environment's name in logs.
    """

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]],
        prompt_key: str = "prompt",
        reference_key: str = "reference",
        verifier: str = "math",
        verifier_kwargs: Mapping[str, Any] | None = None,
        split_key: str | None = None,
        test_fraction: float = 0.1,
        instruction: str = "",
        system_prompt: str | None = None,
        name: str = "rows",
    ) -> None:
        self.name = name
        self.verifier, self.verifier_kwargs = verifier, dict(verifier_kwargs or {})
        self._splits: dict[str, list[Task]] = {"train": [], "test": []}
        skipped = 0
        for i, row in enumerate(rows):
            prompt, problem = row.get(prompt_key), None
            if isinstance(prompt, str) and prompt.strip():
                problem = prompt
                content = f"{prompt} {instruction}".strip()
                prompt = [{"role": "user", "content": content}]
                if system_prompt:
                    prompt.insert(0, {"role": "system", "content": system_prompt})
            elif not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt)):
                logger.warning("%s: row %d skipped: column %r must be text or chat messages, got %r", name, i, prompt_key, prompt)
                skipped += 1
                continue
            if reference_key not in row or row[reference_key] is None:
                logger.warning("%s: row %d skipped: no %r column", name, i, reference_key)
                skipped += 1
                continue
            if split_key:
                split = row.get(split_key)
                if split not in self._splits:
                    logger.warning("%s: row %d skipped: %r is %r, not 'train' or 'test'", name, i, split_key, split)
                    skipped += 1
                    continue
            else:
                split = "test" if in_test_split(json.dumps(prompt, sort_keys=True), test_fraction) else "train"
            info = {k: v for k, v in row.items() if k not in (prompt_key, reference_key) and isinstance(v, (str, int, float, bool))}
            info["row"] = i
            if problem is not None:
                info.setdefault("problem", problem)
            self._splits[split].append(Task(prompt, row[reference_key], info))
        self.skipped = skipped
        if not any(self._splits.values()):
            raise ValueError(f"{name}: no usable rows (each needs a {prompt_key!r} and a {reference_key!r} column); {skipped} skipped")

    def tasks(self, split: str = "train") -> list[Task]:
        """The rows of ``split`` as tasks, in file order."""
        self._check_split(split)
        return list(self._splits[split])

    def reward(self) -> Reward:
        """The named verifier, built with ``verifier_kwargs``."""
        from rlvr.registry import load_verifier

        return load_verifier(self.verifier, **self.verifier_kwargs)


class JSONLEnvironment(RowsEnvironment):
    """A JSONL file as an environment (see :class:`RowsEnvironment` for the options)."""

    def __init__(self, path: str | Path, **kwargs: Any) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no JSONL file at {path}; pass --env jsonl:PATH with an existing file")
        kwargs.setdefault("name", f"jsonl:{path.name}")
        super().__init__(read_jsonl(path), **kwargs)


class DatasetEnvironment(RowsEnvironment):
    """A ``datasets`` dataset (or a directory saved with ``save_to_disk``) as an environment."""

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        if isinstance(dataset, (str, Path)):
            from datasets import load_from_disk

            dataset = load_from_disk(str(dataset))
        kwargs.setdefault("name", "dataset")
        super().__init__(iter(dataset), **kwargs)


def make_environment(spec: str, **kwargs: Any) -> Environment:
    """Build an environment from a command-line spec.

    - ``"jsonl:PATH"``: a JSONL file (:class:`JSONLEnvironment`);
    - ``"dataset:PATH"``: a dataset saved with ``datasets``' ``save_to_disk``;
    - anything else: a registered environment name (``python -m rlvr list``).
    """
    if spec.startswith("jsonl:"):
        return JSONLEnvironment(spec[len("jsonl:") :], **kwargs)
    if spec.startswith("dataset:"):
        return DatasetEnvironment(spec[len("dataset:") :], **kwargs)
    from rlvr.registry import load_environment

    return load_environment(spec, **kwargs)
