"""``python -m rlvr.train``: GRPO on an environment, from a YAML config plus ``--key value`` overrides.

::

    python -m rlvr.train                                   # the embedded default: arithmetic, SmolLM2-135M, CPU-sized
    python -m rlvr.train --config run.yaml --learning_rate 2e-6 --max_steps 200
    python -m rlvr.train --env gsm8k --generator hf --output-dir runs/gsm8k
    python -m rlvr.train --env jsonl:data.jsonl --verifier math
    python -m rlvr.train --resume runs/gsm8k               # continue from its latest checkpoint

Every :class:`~rlvr.trainers.grpo_config.GRPOConfig` field is a flag (``--num_generations 8``
or ``--num-generations 8``); values are parsed as YAML (``--env_kwargs '{digits: 2}'``,
``--report_to tensorboard,wandb``). The config is checked completely before any model is
loaded. The run directory receives ``config.json``, ``metrics.jsonl`` (one line per step),
``eval.json`` (held-out accuracy before and after), ``curves.png``, ``checkpoint-N/`` every
``save_steps`` and ``final/`` (the trained model, LoRA merged, with its tokenizer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_config", "plot_curves"]

TRAINERS = ("grpo",)


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_config(argv: list[str]) -> tuple[Any, str | None]:
    """Command line -> ``(GRPOConfig, resume_dir)``; raises ``ConfigError``/``SystemExit`` on a bad one, loading no model."""
    import yaml

    from rlvr.trainers.grpo_config import ConfigError, GRPOConfig

    defaults = GRPOConfig.__dataclass_fields__
    fields = ", ".join(
        f"--{name} ({f.default!r})" if f.default is not dataclasses.MISSING else f"--{name} ({f.default_factory()!r})"
        for name, f in defaults.items()
    )
    parser = argparse.ArgumentParser(
        prog="python -m rlvr.train",
        description="GRPO with verifiable rewards. Any GRPOConfig field is a --flag; see docs/training.md.",
        epilog=f"GRPOConfig fields (default): {fields}",
    )
    parser.add_argument("--config", help="YAML file of GRPOConfig fields")
    parser.add_argument("--trainer", default="grpo", choices=TRAINERS, help="training method (default grpo)")
    parser.add_argument("--resume", help="a run directory or checkpoint-N directory to continue from")
    args, rest = parser.parse_known_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {path}: expected a mapping of GRPOConfig fields, got {type(loaded).__name__}")
        values.update(loaded)
    if args.resume:
        from rlvr.trainers.grpo_trainer import find_checkpoint

        state = json.loads((find_checkpoint(args.resume) / "trainer_state.json").read_text())
        values = {**state["config"], **values}
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}; options look like --key value")
        key = token[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                raw = "true"  # a bare --flag is a boolean switch
                i += 1
            else:
                raw = rest[i + 1]
                i += 2
        key = key.replace("-", "_")
        values[key] = raw if key in ("output_dir", "model", "env") else _parse_value(raw)
    if args.resume and "output_dir" not in values:
        values["output_dir"] = str(_run_dir_of(args.resume))
    values.setdefault("output_dir", str(Path("runs") / time.strftime("%Y%m%d-%H%M%S")))
    return GRPOConfig.from_dict(values), args.resume


def _run_dir_of(resume: str) -> Path:
    path = Path(resume)
    return path.parent if (path / "trainer_state.json").exists() else path


def plot_curves(metrics_path: str | Path, out_path: str | Path, eval_summary: dict[str, Any] | None = None) -> None:
    """Reward and accuracy over steps (with the held-out accuracy before/after when given) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(steps, [r["reward_mean"] for r in rows], label="reward (train batch)", alpha=0.5)
    ax[0].plot(steps, _smooth([r["reward_mean"] for r in rows]), label="reward, smoothed")
    ax[0].set_xlabel("step")
    ax[0].set_title("reward")
    ax[0].legend()
    ax[1].plot(steps, [r["accuracy"] for r in rows], label="accuracy (train batch)", alpha=0.5)
    ax[1].plot(steps, _smooth([r["accuracy"] for r in rows]), label="accuracy, smoothed")
    if eval_summary and "before" in eval_summary and "after" in eval_summary and steps:
        ax[1].plot(
            [0, steps[-1]],
            [eval_summary["before"]["accuracy"], eval_summary["after"]["accuracy"]],
            "o--",
            label="held-out accuracy (greedy)",
        )
    ax[1].set_xlabel("step")
    ax[1].set_ylim(-0.02, 1.02)
    ax[1].set_title("accuracy")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def _smooth(values: list[float], k: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k + 1) : i + 1]
        out.append(sum(window) / len(window))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m rlvr.train``; returns the exit code."""
    from rlvr.trainers.grpo_config import ConfigError

    try:
        config, resume = parse_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from rlvr.environments import make_environment
    from rlvr.trainers.grpo_trainer import GRPOTrainer

    env = make_environment(config.env, **config.env_kwargs)
    reward = None
    if config.verifier:
        from rlvr.registry import load_verifier

        reward = load_verifier(config.verifier)
    trainer = GRPOTrainer(config, env=env, reward=reward)
    if resume:
        trainer.resume(resume)
    start = time.perf_counter()
    summary = trainer.train()
    wall = time.perf_counter() - start
    if not trainer.is_main:  # with several processes, process 0 writes the run's files
        return 0
    out = trainer.output_dir
    summary["wall_time_s"] = wall
    (out / "eval.json").write_text(json.dumps(summary, indent=2, default=str))
    if (out / "metrics.jsonl").exists():
        plot_curves(out / "metrics.jsonl", out / "curves.png", summary)
    line = f"done: {trainer.step} steps in {wall / 60:.1f} min -> {out}"
    if "before" in summary and "after" in summary:
        line += f"; held-out accuracy {summary['before']['accuracy']:.1%} -> {summary['after']['accuracy']:.1%}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
