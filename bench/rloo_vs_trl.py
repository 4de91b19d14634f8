"""rlvr RLOO vs TRL ``RLOOTrainer``: seconds per optimizer step on the same job, in one run.

Same model (SmolLM2-135M-Instruct), same task (rlvr's ``arithmetic`` environment, its system
prompt), same reward (``rlvr.verifiers.math.MathVerifier``; a TIMEOUT / ERROR outcome is None
for TRL, which leaves it out of its baselines as rlvr does), same batch (16 completions per
step: 2 prompts x 8), same lengths (up to 64 new tokens), same learning rate, same KL
coefficient (``--beta``, default 0: neither loads a reference model), 10 steps each. TRL
generates with ``transformers.generate`` (its default on CPU; ``use_vllm`` needs CUDA), rlvr
with its default generator (vLLM when importable). Model loading and engine start-up are
outside the timed steps for both.

Each framework runs as its user gets it: its own precision default (rlvr: bf16 autocast where
bf16 is fast -- CUDA, or a CPU with AMX; TRL: ``bf16=True`` unless told otherwise). The table
says which CPU ran it (model name, AMX or not), the load average, and each side's precision.

    python bench/rloo_vs_trl.py                        # both, 10 steps each
    python bench/rloo_vs_trl.py --steps 3 --only rlvr
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpo_vs_trl import MODEL, _switch, report, run_each, task_data  # noqa: E402


def run_rlvr(steps: int, bf16: bool | None, lr: float, beta: float) -> dict:
    from rlvr.trainers.rloo_config import RLOOConfig
    from rlvr.trainers.rloo_trainer import RLOOTrainer

    cfg = RLOOConfig(
        model=MODEL, max_steps=steps, num_generations=8, generation_batch_size=16, max_completion_length=64,
        learning_rate=lr, beta=beta, bf16=bf16, eval_before=False, eval_after=False, save_final_model=False,
        output_dir=tempfile.mkdtemp(prefix="bench-rlvr-rloo-"), progress_bar=False,
    )  # fmt: skip
    start = time.perf_counter()
    trainer = RLOOTrainer(cfg, env=task_data())
    setup = time.perf_counter() - start
    trainer.train()
    h = trainer.history
    return {
        "framework": "rlvr",
        "generator": trainer.generator.name,
        "bf16": trainer.policy.bf16,
        "setup_s": setup,
        "step_times_s": [r["step_time_s"] for r in h],
        "generation_s": [r["generation_time_s"] for r in h],
        "train_s": [r["train_time_s"] for r in h],
        "reward_mean": [r["reward_mean"] for r in h],
    }


def run_trl(steps: int, bf16: bool | None, lr: float, beta: float) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig as TRLConfig
    from trl import RLOOTrainer as TRLTrainer

    from rlvr.models import resolve_model
    from rlvr.rewards import Sample, Status
    from rlvr.verifiers.math import MathVerifier

    tasks = task_data().tasks("train")
    ds = Dataset.from_list([{"prompt": t.prompt, "answer": t.reference} for t in tasks])
    verifier = MathVerifier()

    def math_reward(prompts, completions, answer, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        outs = verifier.score([Sample(p, t, a) for p, t, a in zip(prompts, texts, answer)])
        return [o.score if o.status is Status.OK else None for o in outs]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.last = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.last)

    path = resolve_model(MODEL)
    timer = Timer()
    args = TRLConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-rloo-"), per_device_train_batch_size=16, gradient_accumulation_steps=1,
        num_generations=8, max_completion_length=64, max_steps=steps, learning_rate=lr, beta=beta, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, temperature=1.0, disable_tqdm=True,
        **({} if bf16 is None else {"bf16": bf16}),
    )  # fmt: skip
    start = time.perf_counter()
    trainer = TRLTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        reward_funcs=math_reward,
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(path),
        callbacks=[timer],
    )
    setup = time.perf_counter() - start
    trainer.train()
    return {
        "framework": "trl",
        "generator": "transformers.generate",
        "bf16": bool(trainer.args.bf16),
        "setup_s": setup,
        "step_times_s": timer.times,
        "reward_mean": [r["reward"] for r in trainer.state.log_history if "reward" in r],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--beta", type=float, default=0.0, help="KL coefficient for both (0: no reference model)")
    parser.add_argument("--only", choices=["rlvr", "trl"])
    parser.add_argument("--rlvr-bf16", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--trl-bf16", choices=["default", "on", "off"], default="default")
    parser.add_argument("--out", help="also append the Markdown table to this file")
    args = parser.parse_args()
    if args.only:
        run = run_rlvr if args.only == "rlvr" else run_trl
        bf16 = _switch(args.rlvr_bf16 if args.only == "rlvr" else args.trl_bf16)
        print("RESULT " + json.dumps(run(args.steps, bf16, args.lr, args.beta)), flush=True)
        return
    flags = ["--steps", str(args.steps), "--lr", str(args.lr), "--beta", str(args.beta)]
    report(run_each(__file__, flags + ["--rlvr-bf16", args.rlvr_bf16, "--trl-bf16", args.trl_bf16]), args.out)


if __name__ == "__main__":
    main()
