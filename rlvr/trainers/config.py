"""``TrainConfig``: the fields and checks every training method shares.

A method's config is a dataclass that inherits this one -- directly (offline methods), or
through :class:`~rlvr.trainers.online_config.OnlineConfig` (online methods: environment,
generation, evaluation), no deeper -- and adds only its own fields and checks, in its ``check`` method, after
``super().check()``. A bad value fails in ``__post_init__``, before any model, tokenizer
or engine is loaded, with a :class:`ConfigError` that names the field and the fix.
``python -m rlvr.train`` builds a config from a YAML file plus ``--key value`` overrides,
so every field is also a command-line flag.

This module imports nothing heavy (no torch): a bad config is reported in a second.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from rlvr.precision import precision_override

__all__ = ["ConfigError", "TrainConfig", "check_batches", "launched_world_size", "LOG_LEVELS", "PARALLELISM", "REPORT_TO", "SCHEDULERS"]

SCHEDULERS = ("constant", "linear", "cosine")
PARALLELISM = ("ddp", "fsdp")
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
LOG_LEVELS = ("info", "debug", "warning")


class ConfigError(ValueError):
    """A configuration (or set-up) that cannot run; the message names the field and the fix."""


@dataclass
class TrainConfig:
    """What every trainer needs: model, data, optimizer, schedule, precision, LoRA, outputs."""

    trainer: ClassVar[str] = ""
    """``module:Class`` of the trainer this config drives (imported only when training starts)."""

    # --- what to train ----------------------------------------------------------------
    model: str = "smollm2-135m-instruct"
    """Model short name (see ``rlvr.models``), local directory, or Hub id already in the local cache."""
    seed: int = 0
    """Seeds data order, sampling and initialisation; same seed = same run."""

    # --- optimization -----------------------------------------------------------------
    max_steps: int = 40
    """Optimizer steps to run."""
    learning_rate: float = 2e-5
    """Peak AdamW learning rate."""
    lr_scheduler_type: str = "constant"
    """``constant``, ``linear`` (decay to 0) or ``cosine`` (to 0), after warmup."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off)."""
    micro_batch_size: int = 16
    """Sequences per forward/backward pass (gradients accumulate over the step)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    bf16: bool | None = None
    """Run the trainer's forward/backward under bf16 autocast; None = where it is faster: measured once per CPU (``python -m rlvr doctor``), CUDA with bf16; ``RLVR_PRECISION=fp32|bf16`` decides for the machine."""
    lora_r: int = 0
    """LoRA rank; 0 = full fine-tuning. The saved ``final/`` model is merged."""
    lora_alpha: int = 32
    """LoRA alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: list[str] | str = "all-linear"
    """Modules LoRA adapts (``all-linear`` or a list of names)."""

    # --- several processes ----------------------------------------------------------------
    parallelism: str = "ddp"
    """How several processes share the model: ``ddp`` (each holds all of it; gradients averaged) or ``fsdp`` (FSDP2: parameters, gradients and optimizer state sharded one decoder layer at a time; needs several processes)."""
    fsdp_cpu_offload: bool = False
    """``fsdp`` on GPUs: keep the parameter, gradient and optimizer shards in CPU memory between uses (less GPU memory, slower steps)."""
    fsdp_reshard_after_forward: bool = True
    """``fsdp``: free each decoder layer's gathered parameters after its forward and gather them again for the backward (ZeRO-3); false keeps them until the backward (ZeRO-2-like: less communication, more memory)."""

    # --- logging, checkpoints -----------------------------------------------------------
    output_dir: str | None = None
    """Where metrics, checkpoints and ``final/`` go (None = ``runs/<timestamp>``, one directory for all processes)."""
    logging_steps: int = 1
    """Write a metrics line every this many steps."""
    save_steps: int = 0
    """Save a resumable checkpoint every this many steps (0 = only at the end)."""
    save_final_model: bool = True
    """Save the trained model (merged if LoRA) and tokenizer to ``output_dir/final``."""
    stall_timeout_s: float = 1800.0
    """The watchdog: a phase of a step (the step, generation, reward, weight sync, a collective between processes) that runs longer than this, or than ``stall_factor`` x its running median, gets a stall report (the phase, the process, every thread's Python stack, in ``stall-RANK.txt``) and stops the run (exit code 6; resume from the last checkpoint). Also the process group's timeout. 0 = no watchdog."""
    stall_factor: float = 10.0
    """Generation, reward or weight sync taking this many times its running median (after 5 of them; never under 60 s) is a stall (0 = only ``stall_timeout_s``). A whole step (which may write a checkpoint) and a collective (which waits on the other processes) get ``stall_timeout_s`` only."""
    max_bad_steps: int = 3
    """A step whose loss or gradient norm is NaN / inf is skipped (weights and optimizer state untouched; ``skipped_step`` in its metrics line); after this many in a row the run stops, keeping its last checkpoint (0 = never stop)."""
    report_to: list[str] | str = "none"
    """Extra loggers: ``tensorboard``, ``wandb``, ``mlflow`` (a list or comma-separated); ``none`` = only metrics.jsonl."""
    progress_bar: bool = True
    """Show a tqdm progress bar."""
    log_level: str = "info"
    """What reaches the terminal: ``info`` (rlvr's progress and results; the generation engine's messages go to ``engine.log`` in the run directory, its real warnings and errors still to stderr), ``debug`` (everything, the engine's included), ``warning`` (no progress bar or memory estimate)."""

    def __post_init__(self) -> None:
        self._coerce()
        if isinstance(self.report_to, str):
            self.report_to = [r.strip() for r in self.report_to.split(",") if r.strip()]
        self.report_to = [r for r in self.report_to if r != "none"]
        self.check()

    # ----------------------------------------------------------------- coercion
    def _coerce(self) -> None:
        """YAML and the command line give text (``"2e-5"``, ``"true"``); a field's type says what it becomes."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str):
                if isinstance(value, bool) or value is None:
                    continue
                if _accepts(hints[f.name], float) and not _accepts(hints[f.name], int) and isinstance(value, int):
                    setattr(self, f.name, float(value))
                continue
            kinds = _scalar_kinds(hints[f.name])
            text = value.strip()
            if str in kinds and type(None) in kinds and text.lower() in ("none", "null"):
                setattr(self, f.name, None)  # --verifier none: no verifier (not one named "none")
                continue
            if str in kinds or not kinds:
                continue
            if kinds == (type(None),):  # a list or dict field that may be None: the field's check parses the text
                if text.lower() in ("none", "null", ""):
                    setattr(self, f.name, None)
                continue
            try:
                if bool in kinds and text.lower() in ("true", "false", "yes", "no", "1", "0"):
                    setattr(self, f.name, text.lower() in ("true", "yes", "1"))
                elif int in kinds:
                    setattr(self, f.name, int(text))
                elif float in kinds:
                    setattr(self, f.name, float(text))
                elif type(None) in kinds and text.lower() in ("none", "null", ""):
                    setattr(self, f.name, None)
                else:
                    raise ValueError(text)
            except ValueError:
                wanted = " or ".join(k.__name__ for k in kinds if k is not type(None))
                self.fail(f.name, f"expected {wanted}, got {value!r}")

    # ----------------------------------------------------------------- checks
    def fail(self, name: str, message: str) -> None:
        """Raise the :class:`ConfigError` for field ``name``."""
        raise ConfigError(f"{type(self).__name__}.{name}: {message}")

    def check_choice(self, name: str, options: tuple[str, ...]) -> None:
        """Fail unless field ``name`` is one of ``options``."""
        if getattr(self, name) not in options:
            self.fail(name, f"got {getattr(self, name)!r}; use one of {', '.join(options)}")

    def check_positive(self, *names: str) -> None:
        """Fail unless each field is an integer >= 1."""
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self.fail(name, f"must be a positive integer, got {value!r}")

    def check_non_negative(self, *names: str) -> None:
        """Fail unless each field is >= 0."""
        for name in names:
            if getattr(self, name) < 0:
                self.fail(name, f"must be >= 0, got {getattr(self, name)}")

    def check(self) -> None:
        """The shared checks; a method's config adds its own after ``super().check()``."""
        self.check_choice("lr_scheduler_type", SCHEDULERS)
        for r in self.report_to:
            if r not in REPORT_TO:
                self.fail("report_to", f"unknown logger {r!r}; use any of {', '.join(REPORT_TO)}")
        self.check_positive("max_steps", "micro_batch_size", "logging_steps")
        self.check_choice("log_level", LOG_LEVELS)
        try:
            precision_override()  # RLVR_PRECISION, read before any model loads
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.check_non_negative("save_steps", "warmup_steps", "lora_r", "max_bad_steps", "stall_timeout_s", "stall_factor")
        if self.learning_rate <= 0:
            self.fail("learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.max_grad_norm < 0:
            self.fail("max_grad_norm", f"must be >= 0 (0 = off), got {self.max_grad_norm}")
        if not 0 <= self.lora_dropout < 1:
            self.fail("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        self.check_parallelism()
        if not self.model:
            self.fail("model", "is empty; give a short name (smollm2-135m-instruct), a local directory or a cached Hub id")

    def check_parallelism(self) -> None:
        """``parallelism`` and its options: ``fsdp`` needs several launched processes; the ``fsdp_*`` options need ``fsdp``."""
        self.check_choice("parallelism", PARALLELISM)
        if self.parallelism == "fsdp" and launched_world_size() == 1:
            self.fail(
                "parallelism",
                "fsdp shards the model over several processes and this run has one: launch it with torchrun "
                "--nproc_per_node N (or accelerate launch --num_processes N), N >= 2, or use parallelism ddp",
            )
        if self.parallelism != "fsdp":
            for name, default in (("fsdp_cpu_offload", False), ("fsdp_reshard_after_forward", True)):
                if getattr(self, name) != default:
                    self.fail(name, f"applies to parallelism fsdp only, and this run has {self.parallelism!r}: set --parallelism fsdp or drop it")

    # ----------------------------------------------------------------- plain data
    @classmethod
    def field_names(cls) -> list[str]:
        """Every configurable field."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def field_help(cls) -> list[tuple[str, Any, str]]:
        """``(name, default, one-line doc)`` for every field, in order (what ``--help`` lists)."""
        docs = _field_docs(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append((f.name, default, docs.get(f.name, "")))
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict; an unknown key fails with the closest known names."""
        known = set(cls.field_names())
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; known fields: {', '.join(sorted(known))}"
                raise ConfigError(f"unknown {cls.__name__} field {key!r}{hint}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what ``config.json`` in a run directory holds)."""
        return dataclasses.asdict(self)


def launched_world_size() -> int:
    """The process count a launcher (``accelerate launch``, ``torchrun``) announced, else 1."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def check_batches(config: TrainConfig, unit: str = "pairs") -> None:
    """The batch checks of a trainer with ``batch_size`` / ``micro_batch_size`` / ``num_epochs``
    fields: a positive batch that splits into micro-batches on every launched process, and
    a positive epoch count when one is given. ``unit`` names what a batch counts, in messages."""
    config.check_positive("batch_size")
    if config.num_epochs is not None and config.num_epochs <= 0:
        config.fail("num_epochs", f"must be > 0, got {config.num_epochs}; or leave it out and set max_steps")
    world = launched_world_size()
    if config.batch_size % (config.micro_batch_size * world):
        per = config.micro_batch_size * world
        lower = max(per, config.batch_size // per * per)
        where = f" x {world} processes" if world > 1 else ""
        config.fail(
            "batch_size",
            f"{config.batch_size} {unit} do not split into micro-batches of {config.micro_batch_size}{where}; "
            f"use batch_size {lower} or {lower + per}, or change micro_batch_size",
        )


def _scalar_kinds(hint: Any) -> tuple[type, ...]:
    """The scalar types a field's annotation admits (``float | None`` -> ``(float, NoneType)``)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    return tuple(a for a in args if a in (bool, int, float, str, type(None)))


def _accepts(hint: Any, kind: type) -> bool:
    return kind in _scalar_kinds(hint)


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), for every class of the MRO."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
