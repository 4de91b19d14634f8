"""The model side of every trainer: load the policy, choose its precision, the reference
model, the optimizer and schedule, completion log-probabilities, saving the weights.

- :func:`load_policy` -> :class:`Policy`: the model (a name, a path or a module), its
  tokenizer, LoRA (``peft``), gradient checkpointing, the process's device, the DDP wrapper
  that trains when there are several processes, and the bf16 choice (:func:`bf16_is_fast`:
  on for CUDA with bf16 and for CPUs with AMX; on a CPU without AMX bf16 matmuls are slower
  than fp32).
- :func:`reference_model`, :func:`make_optimizer`, :func:`make_scheduler`.
- :func:`selective_log_softmax`, :func:`completion_logprobs`: log-probabilities of given
  completion tokens after given prompts (and, for a value head, the hidden states that predict
  them), in one shared-prefix packed forward: each group's prompt computed once, its
  completions attending to it through the block-causal mask of :func:`packed_attention_mask`,
  no padding but at the end of rows, logits only where they are needed.
- :func:`policy_state_dict` (LoRA merged, Hugging Face names: what a generator loads) and
  :func:`save_policy` (the ``final/`` model, merged, with its tokenizer).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlvr.generation import bf16_is_fast
from rlvr.trainers.config import ConfigError, TrainConfig
from rlvr.trainers.run import Processes

__all__ = [
    "Policy",
    "bf16_is_fast",
    "completion_logprobs",
    "load_policy",
    "lr_lambda",
    "make_optimizer",
    "make_scheduler",
    "packed_attention_mask",
    "policy_state_dict",
    "reference_model",
    "save_policy",
    "selective_log_softmax",
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
        bf16: Whether the trainer's forward/backward runs under bf16 autocast.
    """

    model: torch.nn.Module
    train_model: torch.nn.Module
    tokenizer: Any
    model_path: str | None
    is_peft: bool
    device: torch.device
    bf16: bool

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
    on_cpu = next(model.parameters()).device.type == "cpu"
    if processes.world_size > 1 or (processes.device.type != "cpu" and on_cpu):
        model = model.to(processes.device)
    model.train()
    device = next(model.parameters()).device
    # the forward that trains goes through DistributedDataParallel when there are several processes
    train_model = processes.accelerator.prepare_model(model) if processes.world_size > 1 else model
    bf16 = config.bf16 if config.bf16 is not None else bf16_is_fast(device)
    return Policy(model, train_model, tokenizer, model_path, peft_config is not None, device, bf16)


def reference_model(policy: Policy) -> torch.nn.Module | None:
    """A frozen copy of the initial policy, or None under LoRA (the reference is the model with adapters off)."""
    if policy.is_peft:
        return None
    return copy.deepcopy(policy.model).eval().requires_grad_(False)


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
        logits = base.get_output_embeddings()(hidden)
    logp = selective_log_softmax(logits.float() / temperature, targets)
    logp = logp.new_zeros(completion_mask.shape).masked_scatter(completion_mask, logp)
    if not return_hidden:
        return logp
    hidden = hidden.new_zeros(*completion_mask.shape, hidden.shape[-1]).masked_scatter(completion_mask[..., None], hidden)
    return logp, hidden


def policy_state_dict(policy: Policy) -> dict[str, torch.Tensor]:
    """Hugging Face-named weights of the current policy (LoRA merged in)."""
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


def save_policy(policy: Policy, path: str | os.PathLike, processes: Processes) -> None:
    """The policy in Hugging Face format (LoRA merged) plus the tokenizer, written by process 0."""
    path = Path(path)
    if processes.is_main:
        path.mkdir(parents=True, exist_ok=True)
        if policy.is_peft:
            merged = copy.deepcopy(policy.model).merge_and_unload()
            merged.save_pretrained(path, safe_serialization=True)
        else:
            policy.model.save_pretrained(path, safe_serialization=True)
        policy.tokenizer.save_pretrained(path)
    processes.barrier()
