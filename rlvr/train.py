"""``python -m rlvr.train``: train with any registered trainer, from a YAML config plus ``--key value`` overrides.

::

    python -m rlvr.train                                   # GRPO, the embedded default: arithmetic, SmolLM2-135M, CPU-sized
    python -m rlvr.train --trainer grpo --help             # every field of the trainer's config, with its default
    python -m rlvr.train --config run.yaml --learning_rate 2e-6 --max_steps 200
    python -m rlvr.train --env gsm8k --generator hf --output-dir runs/gsm8k
    python -m rlvr.train --env jsonl:data.jsonl --verifier math
    python -m rlvr.train --resume runs/gsm8k               # continue from its latest checkpoint (same trainer)

``--trainer NAME`` picks a trainer registered under the entry-point group ``rlvr.trainers``
(``python -m rlvr list`` shows them; third-party packages register theirs the same way).
The name may also come from the config file's ``trainer:`` key or, with ``--resume``, from
the checkpoint; the default is ``grpo``. Every field of the trainer's config is a flag
(``--num_generations 8`` or ``--num-generations 8``); values are parsed as YAML
(``--env_kwargs '{digits: 2}'``, ``--report_to tensorboard,wandb``).

The config, the model source and the environment are checked before any model is loaded,
and torch is not imported until they pass: a bad input is one ``error: ...`` line, exit
code 2, and nothing written. The run directory receives ``config.json``, ``metrics.jsonl``
(one line per step), ``eval.json`` (held-out accuracy before and after), ``curves.png``,
``checkpoint-N/`` every ``save_steps`` and ``final/`` (the trained model, LoRA merged, with
its tokenizer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rlvr.trainers.config import ConfigError

__all__ = ["main", "parse_config"]

DEFAULT_TRAINER = "grpo"

# Exit codes (docs/reliability.md): 0 done; 2 a bad config or command line; 3 the generation
# server stayed away; 4 a checkpoint or final/ could not be written (disk full, quota, I/O);
# 5 too many bad steps in a row (NaN / inf); 75 stopped by SIGTERM / SIGINT at a checkpoint
# (resume with --resume).
EXIT_WRITE_FAILED = 4
EXIT_BAD_STEPS = 5
EXIT_PREEMPTED = 75


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _overrides(rest: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}; options look like --key value")
        key = token[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 >= len(rest) or rest[i + 1].startswith("--"):
            raw = "true"  # a bare --flag is a boolean switch
            i += 1
        else:
            raw = rest[i + 1]
            i += 2
        key = key.replace("-", "_")
        values[key] = raw if key in ("output_dir", "model", "env", "system_prompt") else _parse_value(raw)
    return values


def _help(name: str, config_class: type) -> str:
    lines = [
        f"usage: python -m rlvr.train [--trainer {name}] [--config FILE.yaml] [--resume DIR] [--FIELD VALUE ...]",
        "",
        f"Trains with the {name!r} trainer ({config_class.__module__}.{config_class.__name__}).",
        "Every field below is a --flag (values parsed as YAML); see docs/training.md.",
        "",
        "  --trainer NAME   a registered trainer (python -m rlvr list); default grpo",
        "  --config FILE    a YAML file of fields (and optionally `trainer: NAME`)",
        "  --resume DIR     a run directory or checkpoint-N directory to continue from",
        "",
        f"{config_class.__name__} fields (default):",
    ]
    for field_name, default, doc in config_class.field_help():
        lines.append(f"  --{field_name} ({default!r})")
        if doc:
            lines.append(f"      {doc}")
    return "\n".join(lines)


def parse_config(argv: list[str]) -> tuple[Any, str | None]:
    """Command line -> ``(config, resume_dir)``; raises ``ConfigError`` on a bad one, importing no torch.

    The config is an instance of the chosen trainer's config class (``GRPOConfig`` for ``grpo``).
    """
    import yaml

    from rlvr.registry import load_trainer_config
    from rlvr.trainers.run import read_trainer_state

    parser = argparse.ArgumentParser(prog="python -m rlvr.train", add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--trainer")
    parser.add_argument("--resume")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    values: dict[str, Any] = {}
    from_file = None
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {path}: expected a mapping of config fields, got {type(loaded).__name__}")
        from_file = loaded.pop("trainer", None)
        loaded.pop("resolved", None)  # a run's config.json records what it chose; the fields decide again
        values.update(loaded)
    if args.resume == "latest_valid":  # the newest checkpoint of the run directory that matches its checksums
        from rlvr.trainers.run import latest_valid_checkpoint

        run_dir = _overrides(rest).get("output_dir") or values.get("output_dir")
        if not run_dir:
            raise ConfigError("--resume latest_valid needs the run directory: add --output_dir RUN_DIR")
        args.resume = str(latest_valid_checkpoint(run_dir))
    state = read_trainer_state(args.resume) if args.resume else None
    saved = state.get("trainer", DEFAULT_TRAINER) if state else None
    name = args.trainer or from_file or saved or DEFAULT_TRAINER
    if saved and name != saved:
        raise ConfigError(f"--resume {args.resume} is a {saved!r} run; resume it with --trainer {saved} (or leave --trainer out)")
    config_class = load_trainer_config(name)
    if args.help:
        print(_help(name, config_class))
        raise SystemExit(0)
    if state:
        values = {**{k: v for k, v in state["config"].items() if k != "trainer"}, **values}
    values.update(_overrides(rest))
    if args.resume and not values.get("output_dir"):
        values["output_dir"] = str(_run_dir_of(args.resume))
    return config_class.from_dict(values), args.resume


def _run_dir_of(resume: str) -> Path:
    path = Path(resume)
    return path.parent if (path / "trainer_state.json").exists() else path


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m rlvr.train``; returns the exit code."""
    from rlvr.generation_server import GenerationServerError, check_link
    from rlvr.registry import RegistryError, load_trainer_class

    try:
        config, resume = parse_config(sys.argv[1:] if argv is None else argv)
        from rlvr.models import check_model_source

        check_model_source(config.model)
        if getattr(config, "generator", None) == "vllm_server":  # a wrong address fails here, before any model loads
            check_link(config.vllm_server_url, timeout_s=config.server_timeout_s)
        trainer_class = load_trainer_class(type(config))
        trainer = trainer_class.from_config(config)
        if resume:
            trainer.resume(resume)
    except (ConfigError, RegistryError, FileNotFoundError, GenerationServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from rlvr.trainers.run import BadStepsError, CheckpointWriteError, Preempted, finish_processes

    start = time.perf_counter()
    try:
        summary = trainer.train()
    except GenerationServerError as exc:  # the server stayed away: the message says where the checkpoint is
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except CheckpointWriteError as exc:  # a full disk: one line, the partial write removed, metrics.jsonl kept
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except BadStepsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_STEPS
    except Preempted as exc:  # a checkpoint at the step boundary; the message says how to resume
        print(str(exc), file=sys.stderr)
        finish_processes()
        return EXIT_PREEMPTED
    wall = time.perf_counter() - start
    if not trainer.is_main:  # with several processes, process 0 writes the run's files
        finish_processes()
        return 0
    out = trainer.output_dir
    summary["wall_time_s"] = wall
    (out / "eval.json").write_text(json.dumps(summary, indent=2, default=str))
    if (out / "metrics.jsonl").exists():
        from rlvr.trainers.run import plot_curves

        plot_curves(out / "metrics.jsonl", out / "curves.png", summary)
    line = f"done: {trainer.step} steps in {wall / 60:.1f} min -> {out}"
    if "before" in summary and "after" in summary:
        line += f"; held-out accuracy {summary['before']['accuracy']:.1%} -> {summary['after']['accuracy']:.1%}"
    print(line)
    generator = getattr(trainer, "generator", None)
    if generator is not None and trainer.processes.world_size == 1:
        # a colocated vLLM engine set up its own (one-process) process group: it takes it down itself,
        # before finish_processes, instead of failing on an already destroyed group at interpreter exit
        generator.close()
    finish_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
