"""The model side of every trainer: load the policy, choose its precision, the reference
model, the optimizer and schedule, completion log-probabilities, saving the weights.

- :func:`load_policy` -> :class:`Policy`: the model (a name, a path or a module), its
  tokenizer, LoRA (``peft``), gradient checkpointing, the process's device, how several
  processes share it (:func:`prepare_for_processes`: the DDP wrapper, or with ``parallelism:
  fsdp`` FSDP2 shards one decoder layer at a time), and the bf16 choice (:func:`choose_precision`:
  ``config.bf16``, else what :func:`rlvr.precision.machine_precision` measured on this CPU --
  bf16 is 4x faster than fp32 on some CPUs and 100x slower on others -- or CUDA's rule; process 0
  decides for all), and what ``mfu`` is measured with (:func:`train_flops_per_token`).
- What differs between the two, so that no trainer needs to know: :func:`sync_gradients`
  (DDP's ``no_sync`` for micro-batches; FSDP reduce-scatters every backward, so gradients stay
  sharded), :func:`whole_model` (every process holds all the weights for a while: generation
  and evaluation, where processes run different numbers of forwards; :func:`live_generator`
  and :func:`generating` use it for the ``hf`` generator), :func:`forward_rounds`
  (how many forwards of a sharded model every process must run together),
  :func:`policy_weights` (the full weights one tensor at a time, gathered from the shards) and
  :func:`memory_estimate` (params, grads, optimizer and activations per process, ddp vs fsdp).
- :func:`reference_model`, :func:`make_optimizer`, :func:`make_scheduler`.
- :func:`selective_log_softmax`, :func:`completion_logprobs`: log-probabilities of given
  completion tokens after given prompts (and, for a value head, the hidden states that predict
  them), in one shared-prefix packed forward: each group's prompt computed once, its
  completions attending to it through the block-causal mask of :func:`packed_attention_mask`,
  no padding but at the end of rows, logits only where they are needed.
- :func:`policy_state_dict` (LoRA merged, Hugging Face names: what a generator loads) and
  :func:`save_policy` (the ``final/`` model, merged, with its tokenizer; a sharded model is
  written one gathered tensor at a time by :func:`save_pretrained`).

Sharded (FSDP2) models: every process must make the same calls in the same order -- each
forward and backward gathers a layer from every process, as does :func:`policy_weights`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlvr.generation import Generator, HFGenerator, bf16_is_fast
from rlvr.precision import PrecisionChoice, machine_precision
from rlvr.trainers.config import ConfigError, TrainConfig
from rlvr.trainers.run import Processes, is_sharded, write_error

__all__ = [
    "Policy",
    "bf16_is_fast",
    "choose_precision",
    "precision_line",
    "precision_record",
    "train_flops_per_token",
    "completion_logprobs",
    "forward_rounds",
    "generating",
    "live_generator",
    "full_state_dict",
    "is_sharded",
    "load_policy",
    "lr_lambda",
    "make_optimizer",
    "make_scheduler",
    "MemoryEstimate",
    "estimate_memory",
    "memory_estimate",
    "most_over_processes",
    "packed_attention_mask",
    "policy_state_dict",
    "policy_weights",
    "prepare_for_processes",
    "reference_model",
    "save_policy",
    "save_pretrained",
    "selective_log_softmax",
    "sync_gradients",
    "whole_model",
]


@dataclass
class Policy:
    """The model being trained and what goes with it.

    Attributes:
        model: The trained module (a ``PeftModel`` under LoRA).
        train_model: What the training forward goes through: ``model``, or its
            ``DistributedDataParallel`` wrapper when there are several processes.
        tokenizer: Its tokenizer (a pad token set).
        model_path: The directory it was loaded from (None for a module passed in).
        is_peft: Whether LoRA adapters are on.
        device: Where it lives.
        bf16: Whether the trainer's forward/backward runs under bf16 autocast (and, sharded,
            whether FSDP gathers bf16 parameters and reduces fp32 gradients).
        sharded: Whether ``model`` is sharded over the processes (``parallelism: fsdp``); then
            ``train_model`` is ``model`` itself.
        reshard_after_forward: Sharded: whether a decoder layer frees its gathered parameters after its forward.
        precision: What the machine's measurement chose (:func:`choose_precision`), the engine's dtype included.
        train_flops_per_token: Model FLOPs of one trained token's forward and backward (:func:`train_flops_per_token`).
    """

    model: torch.nn.Module
    train_model: torch.nn.Module
    tokenizer: Any
    model_path: str | None
    is_peft: bool
    device: torch.device
    bf16: bool
    sharded: bool = False
    reshard_after_forward: bool = True
    precision: PrecisionChoice | None = None
    train_flops_per_token: float = 0.0

    @property
    def peak_flops(self) -> float | None:
        """The probe's measured peak FLOP/s of the training precision on one process (None: not measured)."""
        peak = self.precision.peak_gflops("bfloat16" if self.bf16 else "float32") if self.precision else None
        return peak * 1e9 if peak else None

    def base(self) -> torch.nn.Module:
        """The plain causal LM (the base model under LoRA)."""
        return self.model.get_base_model() if self.is_peft else self.model


def load_policy(
    config: TrainConfig,
    processes: Processes,
    model: torch.nn.Module | str | None = None,
    tokenizer: Any = None,
    peft_config: Any = None,
) -> Policy:
    """Load (or take) the policy and make it ready to train on this process.

    ``model`` is a module, a name or a path (``config.model`` when None); ``peft_config`` a
    ``peft`` config that overrides ``config.lora_r``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.models import check_model_source, resolve_model

    check_processes(config, processes)
    model = config.model if model is None else model
    model_path: str | None = None
    if isinstance(model, str):
        try:
            check_model_source(model)
            model_path = resolve_model(model)
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model {model!r} could not be loaded: {exc}") from exc
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path or model.config._name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if peft_config is None and config.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            task_type="CAUSAL_LM",
        )
    if config.gradient_checkpointing:
        # non-reentrant checkpointing: the variant DistributedDataParallel works with
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
        if config.gradient_checkpointing:
            model.enable_input_require_grads()
    sharded = config.parallelism == "fsdp"
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not sharded and (processes.world_size > 1 or (processes.device.type != "cpu" and on_cpu)):
        model = model.to(processes.device)  # sharded: each layer moves to the device as it is sharded
    model.train()
    device = processes.device if sharded else next(model.parameters()).device
    bf16, precision = choose_precision(config, processes, device)
    if sharded:
        check_shardable(model)
    if processes.is_main and config.log_level != "warning":
        print(memory_estimate(model, config, processes.world_size, bf16).summary(), flush=True)
        print(precision_line(config, bf16, precision), flush=True)
    flops = train_flops_per_token(model, peft_config is not None)  # before sharding: the whole model's parameters
    train_model = prepare_for_processes(model, config, processes, bf16)
    return Policy(
        model, train_model, tokenizer, model_path, peft_config is not None, device, bf16, sharded, config.fsdp_reshard_after_forward,
        precision, flops,
    )  # fmt: skip


def choose_precision(config: TrainConfig, processes: Processes, device: torch.device) -> tuple[bool, PrecisionChoice]:
    """``(bf16, the machine's choice)``: ``config.bf16`` where it is set, else what
    :func:`rlvr.precision.machine_precision` chose. Process 0 measures (or reads its cache) and
    every process takes its answer, so they all train in the same precision."""
    choice = machine_precision(device) if processes.is_main else None
    choice = processes.broadcast(choice)
    return (config.bf16 if config.bf16 is not None else choice.train_bf16), choice


def precision_record(policy: Policy) -> dict[str, Any]:
    """What ``config.json`` keeps under ``resolved`` about the precision, for every trainer: the
    trainer's (``trainer_precision``), the machine's choice with where it came from and the probe's
    numbers (``precision``), and the training FLOPs ``mfu`` counts."""
    record: dict[str, Any] = {"trainer_precision": "bf16 autocast" if policy.bf16 else "fp32"}
    if policy.precision is not None:
        record.update(precision=policy.precision.record(), train_flops_per_token=policy.train_flops_per_token)
    return record


def precision_line(config: TrainConfig, bf16: bool, choice: PrecisionChoice) -> str:
    """One line for the terminal: the trainer's precision, the engine's (for a config that has one),
    and where they came from."""
    source = {"probe": f"measured now in {choice.probe_s:.1f} s", "cache": "measured before"}.get(choice.source, choice.source)
    if config.bf16 is not None:
        source = f"trainer set by the config's bf16, the machine's choice {source}"
    engine = getattr(config, "vllm_dtype", None)
    engine = f", engine {choice.engine_dtype if engine == 'auto' else engine}" if engine else ""
    return f"precision: trainer {'bf16 autocast' if bf16 else 'fp32'}{engine} ({source}; python -m rlvr doctor says why)"


def train_flops_per_token(model: torch.nn.Module, lora: bool) -> float:
    """Model FLOPs of one token's training forward and backward: ``2 N`` forward, where ``N``
    counts every weight a token goes through (all parameters but the input embeddings, the
    output projection counted even when it is tied to them), and ``4 N`` backward (gradients of
    the activations and of the weights), ``2 N`` under LoRA (the frozen weights get no gradient).
    Attention's own ``4 L d T`` (a few percent at these lengths) and recomputation under gradient
    checkpointing are not counted, as usual for MFU."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embed = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    skip = {id(p) for p in embed.parameters()} if embed is not None else set()
    n = sum(p.numel() for p in base.parameters() if id(p) not in skip)
    if head is not None and embed is not None and head.weight is embed.weight:
        n += head.weight.numel()  # tied: the output projection still runs
    return float((2 + (2 if lora else 4)) * n)


# =======================================================================================
# Several processes: DDP or FSDP2
# =======================================================================================


def check_processes(config: TrainConfig, processes: Processes) -> None:
    """The ``parallelism`` checks that need the processes, before any model loads: ``fsdp`` on
    several processes, ``fsdp_cpu_offload`` only where there is a GPU memory to spare."""
    if config.parallelism != "fsdp":
        return
    if processes.world_size < 2:
        raise ConfigError(
            f"{type(config).__name__}.parallelism: fsdp shards the model over several processes and this run has one: "
            "launch it with torchrun --nproc_per_node N (N >= 2), or use parallelism ddp"
        )
    if config.fsdp_cpu_offload and processes.device.type == "cpu":
        raise ConfigError(
            f"{type(config).__name__}.fsdp_cpu_offload: this run trains on the CPU, where the shards are already in CPU "
            "memory; drop fsdp_cpu_offload (it is for GPUs)"
        )


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks FSDP shards one at a time: modules whose class a Hugging Face model
    names in ``_no_split_modules`` (``LlamaDecoderLayer``, ``Qwen2DecoderLayer``, ...)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def check_shardable(model: torch.nn.Module) -> None:
    """Fail (ConfigError) on a model ``parallelism: fsdp`` cannot shard or gather: no decoder
    layers named, or LoRA adapters other than plain linear ones (merged per layer here)."""
    if not _decoder_layers(model):
        raise ConfigError(
            f"parallelism fsdp shards the model one decoder layer at a time, and {type(model).__name__} names none "
            "(its _no_split_modules is empty); use a Hugging Face causal LM, or parallelism ddp"
        )
    try:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer) and (not isinstance(m, LoraLinear) or any(getattr(m, "use_dora", {}).values())):
            raise ConfigError(
                f"parallelism fsdp merges LoRA adapters of linear layers (no DoRA) when it gathers the weights, and {name} "
                f"is a {type(m).__name__}{' with DoRA' if isinstance(m, LoraLinear) else ''}; adapt linear layers only "
                "(lora_target_modules), or use parallelism ddp"
            )


def prepare_for_processes(
    model: torch.nn.Module, config: TrainConfig, processes: Processes, bf16: bool, layers: bool = True, root_reshard: bool = False
) -> torch.nn.Module:
    """What a trained module's forward goes through when there are several processes.

    One process: ``model``. ``ddp``: its ``DistributedDataParallel`` wrapper (each process holds
    it all; gradients averaged). ``fsdp``: ``model`` itself, sharded in place with FSDP2's
    ``fully_shard`` -- each decoder layer (``layers``), then the root (the embeddings, the final
    norm, the LM head) -- with bf16 parameters and fp32 gradient reduction where ``bf16``,
    ``fsdp_cpu_offload`` and ``fsdp_reshard_after_forward``. ``root_reshard``: the root frees its
    gathered parameters after a forward too (a module that never runs backward: the reference).
    """
    if processes.world_size == 1:
        return model
    if config.parallelism != "fsdp":
        return processes.accelerator.prepare_model(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(processes.device.type, (processes.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy() if config.fsdp_cpu_offload else OffloadPolicy()
    if layers:
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=mp, offload_policy=offload, reshard_after_forward=config.fsdp_reshard_after_forward)
    # the root is the causal LM itself, also under LoRA (the PeftModel around it holds no weight of its own):
    # generation calls the LM's forward, training goes through the wrapper into it, and either runs the root first.
    # Its parameters (embeddings, LM head) are needed again at once by the backward: kept gathered until it
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    fully_shard(root, mesh=mesh, mp_policy=mp, offload_policy=offload, reshard_after_forward=root_reshard)
    return model


@contextlib.contextmanager
def sync_gradients(model: torch.nn.Module | None, sync: bool) -> Iterator[None]:
    """Around a micro-batch's forward and backward: average its gradients over the processes
    now (``sync``) or let them accumulate locally until a backward that does.

    Under DDP a micro-batch that is not the step's last runs in ``no_sync`` (one all-reduce per
    step). A sharded (FSDP) model reduce-scatters at every backward whatever ``sync`` says: its
    gradients stay sharded (accumulating them unsharded would hold a whole gradient per process),
    and the sum of the reduced micro-batch gradients is the step's gradient all the same.
    One process, or ``model`` None: nothing to do.
    """
    if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        yield
        return
    with model.no_sync():
        yield


def _fsdp_modules(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def whole_model(policy: Policy) -> Iterator[None]:
    """Every weight of a sharded policy gathered on every process for a while: its forwards
    inside run without a collective, so processes may run different numbers of them
    (generation, evaluation on each process's share of the tasks). Every process must enter it
    together; on leaving, the shards are all that is kept. Not sharded: nothing to do.

    This is how the ``hf`` generator generates with a sharded policy: for the length of a
    generation or an evaluation each process holds the whole model (as an inference engine
    would), then gives the memory back.
    """
    if not policy.sharded:
        yield
        return
    modules = _fsdp_modules(policy.model)
    for m in modules:
        m.unshard()
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(policy.reshard_after_forward and m is not modules[0], recurse=False)  # [0]: the root


def live_generator(policy: Policy, batch_size: int = 64) -> HFGenerator:
    """An ``hf`` generator on the live policy (it always has the current weights). A sharded
    policy's generator holds the whole model while it generates (:func:`generating`)."""
    hold = (lambda: whole_model(policy)) if policy.sharded else None
    return HFGenerator(policy.model, policy.tokenizer, batch_size=batch_size, hold=hold)


@contextlib.contextmanager
def generating(generator: Generator) -> Iterator[None]:
    """Around a whole rollout or evaluation, which every process reaches together: what the
    generator needs to generate on this process alone (an ``hf`` generator on a sharded policy
    gathers its weights; :attr:`~rlvr.generation.HFGenerator.hold`). Nothing for the others."""
    hold = getattr(generator, "hold", None)
    with hold() if hold is not None else contextlib.nullcontext():
        yield


def forward_rounds(model: torch.nn.Module | None, n: int) -> int:
    """How many forwards a process must run when it has ``n`` to run: with a sharded ``model``,
    the most any process has (every forward gathers from every process, so a process with fewer
    repeats one and drops the result); otherwise ``n``."""
    if model is None or not is_sharded(model):
        return n
    return most_over_processes(n)


def most_over_processes(n: int) -> int:
    """The largest ``n`` of any process (``n`` itself with one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return n
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def reference_model(policy: Policy, config: TrainConfig | None = None, processes: Processes | None = None) -> torch.nn.Module | None:
    """A frozen copy of the initial policy, or None under LoRA (the reference is the model with adapters off).

    A sharded policy gets a sharded copy (``config`` and ``processes`` say how): built on the
    meta device, sharded like the policy, then given each process's own shards and buffers --
    no process ever holds the whole copy.
    """
    if policy.is_peft:
        return None
    if not policy.sharded:
        return copy.deepcopy(policy.model).eval().requires_grad_(False)
    if config is None or processes is None:
        raise ValueError("the reference of a sharded policy needs the run's config and processes")
    model = policy.model
    with torch.device("meta"):
        ref = _plain_class(model)(copy.deepcopy(model.config))
    prepare_for_processes(ref, config, processes, policy.bf16, root_reshard=True)
    ref.to_empty(device=policy.device)
    with torch.no_grad():
        for (name, mine), (other, theirs) in zip(model.state_dict().items(), ref.state_dict().items()):
            if name != other:
                raise RuntimeError(f"the reference copy of a sharded policy has {other!r} where the policy has {name!r}")
            _local(theirs).copy_(_local(mine))
        for (_, mine), (_, theirs) in zip(model.named_buffers(), ref.named_buffers()):  # non-persistent: rotary tables
            theirs.copy_(mine)
    return ref.eval().requires_grad_(False)


def _plain_class(model: torch.nn.Module) -> type:
    """The model's own class (FSDP puts a subclass of its own in its place)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (DTensor) tensor; the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered from every process when it is sharded (a collective)."""
    return t.full_tensor().detach() if hasattr(t, "full_tensor") else t.detach()


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """The LR multiplier per step: linear warmup, then constant, linear or cosine decay to 0 at ``max_steps``."""

    def fn(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_scheduler_type == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(config.max_steps - config.warmup_steps, 1)
        if config.lr_scheduler_type == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return fn


def make_optimizer(
    config: TrainConfig, params: list[torch.nn.Parameter] | list[dict[str, Any]], device: torch.device
) -> torch.optim.Optimizer:
    """AdamW over ``params`` -- parameters, or parameter groups (dicts; a group's own ``lr`` wins) --
    with the config's learning rate, betas and weight decay."""
    return torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.weight_decay,
        fused=device.type in ("cpu", "cuda"),  # one kernel over all parameters instead of a Python loop
    )


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The warmup + decay schedule of :func:`lr_lambda`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))


def selective_log_softmax(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., tokens]`` without materialising the full log-softmax."""
    logits = logits.float()
    return logits.gather(-1, tokens[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


def packed_attention_mask(
    prefix_ids: torch.Tensor, sequence_ids: torch.Tensor, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The block-causal ``[R, 1, W, W]`` attention mask of packed rows (:func:`~rlvr.trainers.rollouts.pack_rollouts`).

    Query ``i`` sees key ``j`` when ``j <= i``, both are in the same segment
    (``prefix_ids``), and ``j`` is a prompt token (``sequence_ids == 0``) or a token of the same
    completion: a completion sees its own prompt and its own earlier tokens only. Padding
    (``prefix_ids == -1``) sees the padding before it, so no row of the mask is empty.

    A Hugging Face model takes a 4D mask as it is, and each attention implementation reads it
    its own way: ``sdpa`` a bool mask (True: attend), ``eager`` an additive one (0 or the
    smallest ``dtype`` value), which it adds to the attention scores. Other implementations
    (``flash_attention_*``, ``flex_attention``) do not take a dense mask of this form.
    """
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"the packed forward needs attn_implementation 'sdpa' or 'eager', the model has {attn_implementation!r}: "
            "load it with attn_implementation='sdpa'"
        )
    W = prefix_ids.shape[1]
    causal = torch.ones(W, W, dtype=torch.bool, device=prefix_ids.device).tril()
    same_segment = prefix_ids[:, :, None] == prefix_ids[:, None, :]
    visible_key = (sequence_ids[:, None, :] == 0) | (sequence_ids[:, :, None] == sequence_ids[:, None, :])
    allowed = (causal & same_segment & visible_key)[:, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a ``DistributedDataParallel`` wrapper (a ``PeftModel`` forwards what it lacks to its base)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def _gathered_head(model: torch.nn.Module, head: torch.nn.Module) -> Iterator[None]:
    """The LM head's weight gathered while it is applied outside the forward: a sharded model
    that frees its root's parameters after each forward (a frozen reference) gathers them again
    for the while. The trained policy keeps its root gathered until the backward: nothing to do."""
    if not hasattr(head.weight, "full_tensor"):
        yield
        return
    root = _fsdp_modules(model)[0]
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


def completion_logprobs(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    temperature: float,
    bf16: bool,
    device: torch.device,
    return_hidden: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities ``[B, C]`` of the completion tokens under ``model`` at ``temperature``.

    ``batch`` comes from :func:`rlvr.trainers.rollouts.batch_tensors`. The forward runs over
    its packed rows: each group's prompt once, followed by its completions, with position ids
    that restart after the prompt for each completion and the block-causal mask of
    :func:`packed_attention_mask` (a completion sees its prompt and its own earlier tokens);
    gradients of every completion flow back into the one prompt computation. This is the
    computation of one padded row per completion (prompt + completion), without recomputing
    the prompt and without padding. Logits are computed only at the positions that predict a
    completion token.

    The result is in the padded layout of ``batch["completion_ids"]``, 0 where
    ``completion_mask`` is 0. With ``return_hidden`` it is ``(logp, hidden)``, ``hidden``
    ``[B, C, H]`` the last layer's (normalised) hidden state at the position that predicts
    completion token t -- the state after prompt + ``c[:t]``, what the LM head reads -- and 0
    where ``completion_mask`` is 0 (a value head reads it).

    ``model`` may be a causal LM, a ``peft`` model, or a ``DistributedDataParallel`` wrapper of
    either (the forward goes through the wrapper); ``bf16`` runs it under bf16 autocast.
    """
    base = _unwrap(model)
    config = base.config
    if getattr(config, "final_logit_softcapping", None):
        raise ValueError(
            f"{type(base).__name__} caps its logits (final_logit_softcapping), which completion_logprobs does not "
            "apply: set config.final_logit_softcapping = None or use a model without it"
        )
    mask = packed_attention_mask(
        batch["packed_prefix_ids"].to(device), batch["packed_sequence_ids"].to(device), config._attn_implementation
    )
    completion_mask = batch["completion_mask"].to(device) > 0
    targets = batch["completion_ids"].to(device)[completion_mask]
    index = batch["packed_target_index"].to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(
            input_ids=batch["packed_input_ids"].to(device),
            attention_mask=mask,
            position_ids=batch["packed_position_ids"].to(device),
            output_hidden_states=True,
            logits_to_keep=1,  # the logits this needs are computed below, at the predicting positions only
            use_cache=False,
        )
        last = out.hidden_states[-1]
        hidden = last.reshape(-1, last.shape[-1]).index_select(0, index)  # [N, H], completion_mask order
        head = base.get_output_embeddings()
        with _gathered_head(model, head):
            logits = head(hidden)
    logp = selective_log_softmax(logits.float() / temperature, targets)
    logp = logp.new_zeros(completion_mask.shape).masked_scatter(completion_mask, logp)
    if not return_hidden:
        return logp
    hidden = hidden.new_zeros(*completion_mask.shape, hidden.shape[-1]).masked_scatter(completion_mask[..., None], hidden)
    return logp, hidden


def policy_state_dict(policy: Policy) -> dict[str, torch.Tensor]:
    """Hugging Face-named weights of the current policy (LoRA merged in); a sharded policy's are
    gathered (every process must call this together)."""
    if policy.sharded:
        return dict(policy_weights(policy))
    if not policy.is_peft:
        return {k: v.detach() for k, v in policy.model.state_dict().items()}
    policy.model.merge_adapter()
    try:
        state = {}
        for k, v in policy.model.get_base_model().state_dict().items():
            if "lora_" in k or "modules_to_save" in k:
                continue
            state[k.replace(".base_layer.", ".")] = v.detach().clone()
        return state
    finally:
        policy.model.unmerge_adapter()


def policy_weights(policy: Policy, skip_tied: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's Hugging Face-named weights (LoRA merged) one tensor at a time.

    A sharded policy's tensors are gathered one at a time (``full_tensor``), LoRA merged per
    layer: what a generator or a writer needs, never the whole state dict at once. Every
    process must read it to the end together. ``skip_tied``: a weight that is another's (a tied
    LM head) comes once, under its first name (what ``save_pretrained`` writes).
    """
    yield from _gathered(policy.base(), skip_tied)


def _gathered(model: torch.nn.Module, skip_tied: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """A (sharded) module's state dict one gathered tensor at a time, LoRA linear adapters merged into their base weights."""
    lora = {}
    with contextlib.suppress(ImportError):
        from peft.tuners.lora import Linear as LoraLinear

        lora = {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    seen: set[tuple[int, int]] = set()
    for key, value in model.state_dict().items():
        if "lora_" in key or ".original_module." in key:
            continue  # the LoRA factors are merged below; a module LoRA trains in full replaces its original
        key = re.sub(r"\.modules_to_save\.[^.]+\.", ".", key)
        local = _local(value)
        where = (local.untyped_storage().data_ptr(), local.storage_offset()) if local.numel() else (id(value), 0)
        if skip_tied and where in seen:
            continue
        seen.add(where)
        owner, _, leaf = key.rpartition(".")
        layer = owner.removesuffix(".base_layer")
        if owner.endswith(".base_layer") and layer in lora:
            tensor = _full(value)
            if leaf == "weight":
                tensor = _merge_lora(lora[layer], tensor)
            yield f"{layer}.{leaf}", tensor
        else:
            yield key, _full(value)


def _merge_lora(layer: Any, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` plus the active adapters' ``scaling * B @ A`` of a LoRA linear ``layer`` (its factors gathered)."""
    for name in layer.active_adapters:
        if name not in layer.lora_A or name in getattr(layer, "merged_adapters", []):
            continue
        a, b = _full(layer.lora_A[name].weight).float(), _full(layer.lora_B[name].weight).float()
        delta = (b @ a) * layer.scaling[name]
        weight = weight + (delta.T if layer.fan_in_fan_out else delta).to(weight.dtype)
    return weight


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict with every sharded tensor gathered (every process must call it together), on the CPU."""
    return {k: v.contiguous().cpu() for k, v in _gathered(module)}


def save_pretrained(
    model: torch.nn.Module,
    path: str | os.PathLike,
    processes: Processes | None,
    tokenizer: Any = None,
    weights: Iterator[tuple[str, torch.Tensor]] | None = None,
    max_shard_bytes: int = 2 << 30,
) -> None:
    """A Hugging Face model directory (``config.json``, safetensors, the tokenizer) from a
    possibly sharded ``model``, written by process 0 one gathered tensor at a time.

    ``weights`` (default: ``model``'s own, gathered; tied weights once) are collected into
    safetensors files of at most ``max_shard_bytes`` -- ``model.safetensors``, or
    ``model-0000i-of-0000n.safetensors`` and their index -- so process 0 never holds more
    than one file's worth. Every process must call it together; ``processes`` None: this
    process writes its own copy (no barrier).
    """
    from safetensors.torch import save_file

    path = Path(path)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    weights = weights if weights is not None else _gathered(base, skip_tied=True)
    main = processes is None or processes.is_main
    if main:
        path.mkdir(parents=True, exist_ok=True)
    files: list[tuple[Path, list[str]]] = []
    part: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal part, size
        if part:
            file = path / f"model-part-{len(files) + 1:05d}.safetensors.tmp"
            save_file(part, str(file), metadata={"format": "pt"})
            files.append((file, list(part)))
        part, size = {}, 0

    for name, tensor in weights:
        if not main:
            continue  # every process gathers; process 0 writes
        tensor = tensor.detach().contiguous().cpu()
        if size and size + tensor.nbytes > max_shard_bytes:
            flush()
        part[name] = tensor
        size += tensor.nbytes
        total += tensor.nbytes
    if main:
        flush()
        if len(files) == 1:
            os.replace(files[0][0], path / "model.safetensors")
        else:
            weight_map = {}
            for i, (file, names) in enumerate(files, 1):
                final = f"model-{i:05d}-of-{len(files):05d}.safetensors"
                os.replace(file, path / final)
                weight_map.update(dict.fromkeys(names, final))
            (path / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            )
        config = copy.deepcopy(base.config)
        config.architectures = [_plain_class(base).__name__]  # as save_pretrained records it: what loads this directory
        config.save_pretrained(path)
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    if processes is not None:
        processes.barrier()


def save_policy(policy: Policy, path: str | os.PathLike, processes: Processes) -> None:
    """The policy in Hugging Face format (LoRA merged) plus the tokenizer, written by process 0
    (a sharded policy: gathered one tensor at a time, :func:`save_pretrained`)."""
    path = Path(path)
    if policy.sharded:
        save_pretrained(policy.base(), path, processes, policy.tokenizer, policy_weights(policy, skip_tied=True))
        return
    error: Exception | None = None
    if processes.is_main:
        # written beside, then renamed: a write that fails (a full disk) leaves no half model
        # under the final name, and its partial files are removed, giving the space back
        tmp = path.with_name(path.name + ".tmp")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if policy.is_peft:
                merged = copy.deepcopy(policy.model).merge_and_unload()
                merged.save_pretrained(tmp, safe_serialization=True)
            else:
                policy.model.save_pretrained(tmp, safe_serialization=True)
            policy.tokenizer.save_pretrained(tmp)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        except Exception as exc:  # noqa: BLE001 -- one line below, whatever the library called it
            shutil.rmtree(tmp, ignore_errors=True)
            error = exc
    if processes.sum(float(error is not None))[0]:
        needed = sum(p.numel() * p.element_size() for p in policy.model.parameters())
        raise write_error(path, error or OSError(0, "process 0 could not write it"), needed)


# =======================================================================================
# Memory per process
# =======================================================================================


@dataclass
class MemoryEstimate:
    """Estimated bytes per process of a training run's state (:func:`estimate_memory`).

    ``params``: the fp32 weights (under fsdp the shard, plus the layers gathered for compute);
    ``grads``: fp32 gradients of the trainable weights; ``optimizer``: AdamW's two fp32 moments
    of the trainable weights; ``activations``: what one micro-batch's forward keeps for its
    backward (with the logits). ``ddp``: the same run's total with ``parallelism: ddp``.
    """

    parallelism: str
    world_size: int
    params: float
    grads: float
    optimizer: float
    activations: float
    ddp: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations

    def summary(self) -> str:
        """One line: each part and the total in GiB, and the ddp total beside an fsdp one."""
        gib = 1 << 30
        parts = ", ".join(f"{k} {getattr(self, k) / gib:.2f}" for k in ("params", "grads", "optimizer", "activations"))
        where = f"{self.parallelism} over {self.world_size} processes" if self.world_size > 1 else "one process"
        ddp = f" (ddp: {self.ddp / gib:.2f} GiB)" if self.parallelism == "fsdp" else ""
        return f"memory per process, estimated ({where}): {parts} = {self.total / gib:.2f} GiB{ddp}"


def estimate_memory(
    num_params: int,
    num_trainable: int,
    hidden: int,
    layers: int,
    vocab: int,
    tokens: int,
    world_size: int = 1,
    parallelism: str = "ddp",
    bf16: bool = False,
    gradient_checkpointing: bool = False,
    cpu_offload: bool = False,
    logit_tokens: int | None = None,
) -> MemoryEstimate:
    """The memory per process of training a model of ``num_params`` weights (``num_trainable``
    of them trained) with ``layers`` decoder layers of width ``hidden``, a ``vocab``-sized LM
    head and micro-batches of ``tokens`` tokens.

    Weights, gradients and AdamW's moments are fp32 (4, 4, 8 bytes per weight); ``fsdp`` divides
    them by ``world_size`` and adds the two decoder layers gathered at a time (bf16 with
    ``bf16``); ``cpu_offload`` moves the sharded state out of GPU memory (counted as 0 there).
    Activations per layer are ~34 x tokens x hidden bytes in 16-bit (twice that in fp32; one
    layer plus each layer's input with gradient checkpointing), plus the fp32 logits and their
    gradient (8 x ``logit_tokens`` x vocab; default: every token). A first-order estimate:
    allocator slack, DDP's buckets and the CUDA context are not in it.
    """
    act_bytes = 2 if bf16 else 4
    per_layer = 34 * tokens * hidden * act_bytes / 2
    activations = (per_layer + layers * tokens * hidden * act_bytes if gradient_checkpointing else layers * per_layer)
    activations += 8 * (tokens if logit_tokens is None else logit_tokens) * vocab
    ddp = 4 * num_params + 12 * num_trainable + activations
    if parallelism != "fsdp" or world_size == 1:
        return MemoryEstimate("ddp", world_size, 4 * num_params, 4 * num_trainable, 8 * num_trainable, activations, ddp)
    shard = 0.0 if cpu_offload else 1 / world_size
    layer_params = max(num_params - vocab * hidden, 0) / max(layers, 1)
    gathered = 2 * layer_params * (2 if bf16 else 4)
    return MemoryEstimate(
        "fsdp", world_size, 4 * num_params * shard + gathered, 4 * num_trainable * shard, 8 * num_trainable * shard, activations, ddp
    )


def memory_estimate(model: torch.nn.Module, config: TrainConfig, world_size: int, bf16: bool = False) -> MemoryEstimate:
    """:func:`estimate_memory` of ``model`` trained with ``config`` on ``world_size`` processes: a
    micro-batch of ``micro_batch_size`` sequences of the config's ``max_length`` (offline methods:
    logits at every position), or of ``max_prompt_length`` (256 where the config has none) plus
    ``max_completion_length`` (online methods: logits at the completion positions only)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    params = list(model.parameters())
    length = getattr(config, "max_length", None) or (
        (getattr(config, "max_prompt_length", None) or 256) + getattr(config, "max_completion_length", 0)
    )
    return estimate_memory(
        num_params=sum(p.numel() for p in params),
        num_trainable=sum(p.numel() for p in params if p.requires_grad),
        hidden=getattr(cfg, "hidden_size", 0),
        layers=getattr(cfg, "num_hidden_layers", 0),
        vocab=getattr(cfg, "vocab_size", 0),
        tokens=config.micro_batch_size * length,
        logit_tokens=None if getattr(config, "max_length", None) else config.micro_batch_size * getattr(config, "max_completion_length", length),
        world_size=world_size,
        parallelism=config.parallelism,
        bf16=bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        cpu_offload=config.fsdp_cpu_offload,
    )
