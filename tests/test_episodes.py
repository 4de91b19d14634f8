"""Multi-turn episodes: token-exact prompts, masks, log-probs and gradients; chat templates;
environments that fail, hang or answer garbage.

The policy is a tiny real Llama (2 layers, from a config) with SmolLM2's tokenizer, generating
through the real ``HFGenerator``. A ``RecordingGenerator`` is that generator plus a list of
what each ``generate`` call was given. Tool-call episodes use a ``ScriptedPolicy``: a
generator that answers from a script (a random tiny model never writes a tool call).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.environments.base import Task
from rlvr.environments.math_python import MathPython
from rlvr.environments.multiturn import MultiTurnEnvironment
from rlvr.episodes import ChatTurns, Episode, EpisodeLimits, run_episodes
from rlvr.generation import Generation, Generator, HFGenerator, SamplingConfig, encode_prompt
from rlvr.models import resolve_model
from rlvr.rewards import FunctionReward, Outcome, Status
from rlvr.trainers.modeling import completion_logprobs
from rlvr.trainers.rollouts import Rollout, batch_tensors, generate_and_score

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_causal_lm(tokenizer, seed=0).eval()


class RecordingGenerator(HFGenerator):
    """``HFGenerator`` that records each call's prompts (as token ids), n, and outputs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[list[list[int]], int, list[Generation]]] = []

    def generate(self, prompts, n, sampling):
        outs = super().generate(prompts, n, sampling)
        self.calls.append(([encode_prompt(self.tokenizer, p) for p in prompts], n, outs))
        return outs


class ScriptedPolicy(Generator):
    """A policy that answers turn t of every episode with ``replies[t]`` (then its end-of-turn token)."""

    name = "scripted"

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies, self.turn = tokenizer, replies, 0
        self.stop_ids = {tokenizer.eos_token_id}

    def generate(self, prompts, n, sampling):
        text = self.replies[min(self.turn, len(self.replies) - 1)]
        self.turn += 1
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + [self.tokenizer.eos_token_id]
        return [Generation(text, encode_prompt(self.tokenizer, p), ids, [0.0] * len(ids), "stop", i) for i, p in enumerate(prompts) for _ in range(n)]


class Scripted(MultiTurnEnvironment):
    """Replies "turn k" as a user message; ``behaviour`` per task: ok, raise, hang, garbage, end."""

    name = "scripted"
    max_turns = 3

    def __init__(self, behaviours=("ok",), hang_s=60.0):
        self.behaviours, self.hang_s = behaviours, hang_s

    def tasks(self, split="train"):
        return [Task([{"role": "user", "content": f"Task {i}: say something."}], b, {"i": i}) for i, b in enumerate(self.behaviours)]

    def respond(self, task, messages, state):
        b = task.reference
        if b == "raise":
            raise RuntimeError("the environment broke")
        if b == "hang":
            time.sleep(self.hang_s)
        if b == "garbage":
            return [{"role": "user"}]
        if b == "end":
            return None
        return [{"role": "user", "content": f"That was turn {len(messages) // 2 + 1}. Go on."}]

    def reward(self):
        return FunctionReward(lambda s: float(len(s.completion) % 2), name="parity")


def _sampling(max_tokens=6, seed=3):
    return SamplingConfig(temperature=1.0, max_tokens=max_tokens, seed=seed)


def test_each_turn_extends_the_last_prompt_exactly(tokenizer, model):
    """One generate call per turn; turn t+1's prompt = turn t's prompt + its sampled ids + the environment's ids."""
    gen = RecordingGenerator(model, tokenizer)
    env = Scripted(("ok", "ok"))
    turns = ChatTurns(tokenizer)
    episodes = run_episodes(gen, env, env.tasks(), 2, _sampling(), EpisodeLimits(3, 2000, 10))
    assert len(gen.calls) == 3, "one generate call per turn"
    assert gen.calls[0][1] == 2 and [len(c[0]) for c in gen.calls] == [2, 4, 4]
    for k, ep in enumerate(episodes):
        assert isinstance(ep, Episode) and ep.turns == 3 and ep.failure is None
        full = ep.prompt_ids + ep.completion_ids
        prompt0 = gen.calls[0][0][k // 2]
        assert ep.prompt_ids == prompt0
        previous, previous_out = prompt0, gen.calls[0][2][k]
        for t in (1, 2):
            prompt = gen.calls[t][0][k]
            sampled = previous_out.completion_ids
            assert prompt[: len(previous) + len(sampled)] == previous + sampled, f"turn {t} re-tokenized the history"
            closing = [] if turns.ends_turn(sampled) else turns.closing_ids
            env_ids = turns.after_turn([ep.messages[2 * t - 1]])
            assert prompt[len(previous) + len(sampled) :] == closing + env_ids
            previous, previous_out = prompt, gen.calls[t][2][k]
        assert full == previous + previous_out.completion_ids
        # model_mask is 1 exactly on the three sampled spans
        spans = [gen.calls[t][2][k].completion_ids for t in range(3)]
        assert sum(ep.model_mask) == sum(len(s) for s in spans)
        sampled_ids = [tok for tok, m in zip(ep.completion_ids, ep.model_mask) if m]
        assert sampled_ids == [tok for s in spans for tok in s]
        assert [m["role"] for m in ep.messages] == ["assistant", "user", "assistant", "user", "assistant"]
        assert ep.text == ep.messages[-1]["content"] == gen.calls[2][2][k].text
        assert len(ep.logprobs) == len(ep.completion_ids)
        assert all(lp == 0.0 for lp, m in zip(ep.logprobs, ep.model_mask) if not m)


def test_a_cut_turn_is_closed_with_masked_end_of_turn_tokens(tokenizer, model):
    gen = RecordingGenerator(model, tokenizer)
    env = Scripted(("ok",))
    [ep] = run_episodes(gen, env, env.tasks(), 1, _sampling(max_tokens=2), EpisodeLimits(2, 2000, 10))
    first = gen.calls[0][2][0]
    assert first.finish_reason == "length" and len(first.completion_ids) == 2
    eos = tokenizer.eos_token_id
    assert ep.completion_ids[2] == eos and ep.model_mask[:3] == [1, 1, 0], "the cut turn is closed by a context <|im_end|>"
    assert ep.turns == 2


def test_a_turn_starts_only_if_it_fits_max_episode_tokens(tokenizer, model):
    gen = RecordingGenerator(model, tokenizer)
    env = Scripted(("ok",))
    prompt_len = len(encode_prompt(tokenizer, env.tasks()[0].prompt))
    feedback = len(ChatTurns(tokenizer).after_turn([{"role": "user", "content": "That was turn 1. Go on."}]))
    budget = prompt_len + 8 + 1 + feedback + 8 - 1  # a cut first turn, its closing, the feedback: one token short of a second turn
    [ep] = run_episodes(gen, env, env.tasks(), 1, _sampling(max_tokens=8), EpisodeLimits(3, budget, 10))
    assert ep.turns == 1 and ep.finish_reason == "length"
    assert len(gen.calls) == 1
    assert len(ep.prompt_ids) + len(ep.completion_ids) <= budget
    assert [m["role"] for m in ep.messages] == ["assistant", "user"]  # what the environment said is kept for the transcript


def test_sampler_logprobs_equal_the_trainers_on_model_tokens_only(tokenizer, model):
    """The packed training forward over episodes gives the generator's log-probs on sampled tokens
    (fp32, same model) and computes nothing for the environment's tokens."""
    env = Scripted(("ok", "ok"))
    eps = run_episodes(HFGenerator(model, tokenizer), env, env.tasks(), 2, _sampling(max_tokens=5), EpisodeLimits(3, 2000, 10))
    tasks = env.tasks()
    rollouts = [Rollout(tasks[e.prompt_index], e, Outcome.ok(1.0)) for e in eps]
    batch = batch_tensors(rollouts, tokenizer.pad_token_id)
    mask = batch["completion_mask"] > 0
    assert int(mask.sum()) == sum(sum(e.model_mask) for e in eps)
    assert int(batch["completion_attention_mask"].sum()) == sum(len(e.completion_ids) for e in eps)
    assert batch["packed_target_index"].numel() == int(mask.sum())
    with torch.no_grad():
        logp = completion_logprobs(model, batch, 1.0, False, torch.device("cpu"))
    assert torch.allclose(logp[mask], batch["sampler_logp"][mask], atol=2e-4), (logp[mask] - batch["sampler_logp"][mask]).abs().max()
    assert (logp[~mask] == 0).all() and (batch["sampler_logp"][~mask] == 0).all()


def test_packed_loss_gradient_equals_naive_forward_over_model_tokens(tokenizer):
    """sum_b A_b * sum_{t sampled} log pi(token_t): the packed forward's gradient equals one plain forward
    per episode over its whole token sequence, reading the log-probs at the sampled positions only."""
    policy = tiny_causal_lm(tokenizer, seed=1)
    env = Scripted(("ok", "ok", "end"))
    eps = run_episodes(HFGenerator(policy, tokenizer), env, env.tasks(), 2, _sampling(max_tokens=5, seed=9), EpisodeLimits(3, 2000, 10))
    assert {e.turns for e in eps} == {1, 3}
    tasks = env.tasks()
    rollouts = [Rollout(tasks[e.prompt_index], e, Outcome.ok(1.0)) for e in eps]
    adv = torch.tensor([1.0, -0.5, 0.25, 2.0, -1.0, 0.5])
    batch = batch_tensors(rollouts, tokenizer.pad_token_id)
    policy.zero_grad()
    logp = completion_logprobs(policy, batch, 1.0, False, torch.device("cpu"))
    (-(logp * batch["completion_mask"]).sum(1) @ adv).backward()
    packed = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    total = 0.0
    for a, e in zip(adv, eps):
        ids = torch.tensor([e.prompt_ids + e.completion_ids])
        logits = policy(input_ids=ids).logits[0].float().log_softmax(-1)
        P = len(e.prompt_ids)
        for t, (tok, m) in enumerate(zip(e.completion_ids, e.model_mask)):
            if m:
                total = total - a * logits[P + t - 1, tok]
    total.backward()
    for n, p in policy.named_parameters():
        assert torch.allclose(packed[n], p.grad, rtol=1e-4, atol=1e-6), n


def test_one_turn_episodes_sample_what_a_single_turn_call_samples(tokenizer, model):
    env = Scripted(("ok", "ok"))
    gen = HFGenerator(model, tokenizer)
    eps = run_episodes(gen, env, env.tasks(), 2, _sampling(seed=5), EpisodeLimits(1, 2000, 10))
    single = gen.generate([t.prompt for t in env.tasks()], 2, _sampling(seed=5))
    assert [e.completion_ids for e in eps] == [g.completion_ids for g in single]
    assert [e.text for e in eps] == [g.text for g in single]
    assert all(e.model_mask == [1] * len(e.completion_ids) for e in eps)


def test_failing_environments_fail_their_episode_only(tokenizer, model):
    """An env that raises -> that episode ERROR; late -> TIMEOUT (not waited for); garbage -> ERROR; the rest go on."""
    env = Scripted(("ok", "raise", "hang", "garbage"), hang_s=30)
    start = time.monotonic()
    eps = run_episodes(HFGenerator(model, tokenizer), env, env.tasks(), 1, _sampling(), EpisodeLimits(3, 2000, 1.0))
    assert time.monotonic() - start < 10, "a hanging environment held the batch"
    ok, raised, hung, garbage = eps
    assert ok.failure is None and ok.turns == 3
    assert raised.failure.status is Status.ERROR and "RuntimeError: the environment broke" in raised.failure.reason
    assert hung.failure.status is Status.TIMEOUT and "within 1 s" in hung.failure.reason
    assert garbage.failure.status is Status.ERROR and "'role' and a text 'content'" in garbage.failure.reason
    assert raised.turns == hung.turns == garbage.turns == 1
    # in a step, failed episodes keep their failure as the outcome; the reward scores the others
    timing = {"generation_time_s": 0.0, "generated_tokens": 0.0, "reward_time_s": 0.0, "reward_compute_s": 0.0}
    out = generate_and_score(
        HFGenerator(model, tokenizer), env.reward(), env.tasks(), 1, _sampling(), 1, timing, env=env, limits=EpisodeLimits(3, 2000, 1.0)
    )
    assert [r.outcome.status for r in out] == [Status.OK, Status.ERROR, Status.TIMEOUT, Status.ERROR]


def test_a_hanging_environment_never_keeps_the_process_from_exiting(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, threading
            sys.path.insert(0, {str(REPO / "tests")!r})
            from conftest import tiny_causal_lm
            from transformers import AutoTokenizer
            from rlvr.environments.base import Task
            from rlvr.environments.multiturn import MultiTurnEnvironment
            from rlvr.episodes import EpisodeLimits, run_episodes
            from rlvr.generation import HFGenerator, SamplingConfig
            from rlvr.models import resolve_model

            class Hang(MultiTurnEnvironment):
                name = "hang"
                def tasks(self, split="train"):
                    return [Task([{{"role": "user", "content": "hi"}}])]
                def respond(self, task, messages, state):
                    threading.Event().wait()  # forever
                def reward(self):
                    return None

            if __name__ == "__main__":
                tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
                [ep] = run_episodes(HFGenerator(tiny_causal_lm(tok), tok), Hang(), Hang().tasks(), 1, SamplingConfig(max_tokens=4), EpisodeLimits(3, 500, 0.5))
                print("STATUS", ep.failure.status.value)
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "STATUS timeout" in proc.stdout


# =======================================================================================
# Chat templates
# =======================================================================================


def _with_template(tokenizer, name: str):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
    if name == "llama3":
        tok.add_special_tokens({"additional_special_tokens": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
        tok.eos_token = "<|eot_id|>"
    return tok


PROMPT = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": "What is 2 + 3?"}]
TURN = 'I will add.\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
REPLY = [{"role": "tool", "name": "add", "content": "5", "status": "ok", "elapsed_s": 0.1}, {"role": "tool", "name": "add", "content": "6"}]
SCHEMA = [{"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.parametrize("name", ["smollm2", "qwen25_tools", "llama3"])
def test_environment_ids_are_what_the_template_renders_after_a_turn(tokenizer, name):
    """prompt ids + a sampled turn (ending in the end-of-turn token) + ChatTurns' ids decode to exactly the
    template's own rendering of the whole conversation with a generation prompt."""
    tok = tokenizer if name == "smollm2" else _with_template(tokenizer, name)
    tools = SCHEMA if name == "qwen25_tools" else None
    turns = ChatTurns(tok, tools)
    sampled = list(tok(TURN, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
    assert turns.ends_turn(sampled)
    ids = encode_prompt(tok, PROMPT, tools) + sampled + turns.after_turn(REPLY)
    clean = [{"role": m["role"], "name": m["name"], "content": m["content"]} for m in REPLY]
    expected = tok.apply_chat_template([*PROMPT, {"role": "assistant", "content": TURN}, *clean], tokenize=False, add_generation_prompt=True, **({"tools": tools} if tools else {}))
    assert tok.decode(ids) == expected
    if name == "qwen25_tools":  # the two results are one user block, as Qwen2.5 groups them
        assert tok.decode(turns.after_turn(REPLY)) == "\n<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n6\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    if name == "smollm2":  # SmolLM2 injects a system prompt when there is none: it appears once, in the prompt
        assert tok.decode(turns.after_turn([{"role": "user", "content": "again"}])) == "\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"


def test_a_history_rewriting_template_never_rewrites_the_episode(tokenizer):
    """A template that strips reasoning from earlier assistant turns: re-rendering the conversation would
    change tokens the model sampled; the episode keeps them, and the environment's ids are still the template's."""
    tok = _with_template(tokenizer, "history_rewriting")
    turns = ChatTurns(tok)
    turn = "<think>\n2 plus 3 is 5\n</think>\nIt is 5."
    sampled = list(tok(turn, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
    reply = [{"role": "user", "content": "Are you sure?"}]
    ids = encode_prompt(tok, PROMPT) + sampled + turns.after_turn(reply)
    text = tok.decode(ids)
    assert text == tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True) + turn + "<|im_end|>\n<|im_start|>user\nAre you sure?<|im_end|>\n<|im_start|>assistant\n"
    rerendered = tok.apply_chat_template([*PROMPT, {"role": "assistant", "content": turn}, *reply], tokenize=False, add_generation_prompt=True)
    assert "2 plus 3 is 5" not in rerendered and "2 plus 3 is 5" in text


def test_templates_that_cannot_join_turns_fail_clearly(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    with pytest.raises(ValueError, match="stop tokens"):
        ChatTurns(tok)
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        ChatTurns(tok)


def test_a_template_that_refuses_the_reply_fails_that_episode_only(tokenizer, model):
    """A template that only takes alternating user/assistant messages cannot render a tool message after a turn."""
    tok = _with_template(tokenizer, "alternating_roles")

    class Mixed(Scripted):
        def respond(self, task, messages, state):
            role = "tool" if task.reference == "tool" else "user"
            return [{"role": role, "content": "result"}]

    env = Mixed(("user", "tool"))
    eps = run_episodes(HFGenerator(model, tok), env, env.tasks(), 1, _sampling(), EpisodeLimits(2, 2000, 10))
    assert eps[0].failure is None and eps[0].turns == 2
    assert eps[1].failure.status is Status.ERROR and "alternate" in eps[1].failure.reason


# =======================================================================================
# Tools in episodes (scripted policy, real sandbox)
# =======================================================================================


def test_tool_calls_run_in_the_sandbox_and_their_results_reach_the_model(tokenizer):
    env = MathPython(tool_timeout_s=2)
    task = Task(env.tasks("test")[0].prompt, "12", {})
    policy = ScriptedPolicy(tokenizer, ["```python\nprint(3 * 4)\n```", '<tool_call>{"name": "python", "arguments": {"code": 7}}</tool_call>', "So \\boxed{12}."])
    [ep] = run_episodes(policy, env, [task], 1, _sampling(), EpisodeLimits(3, 4000, 30))
    assert ep.failure is None and ep.turns == 3
    assert ep.messages[1] == {"role": "tool", "name": "python", "content": "12\n", "status": "ok", "elapsed_s": ep.messages[1]["elapsed_s"]}
    assert ep.messages[3]["content"].startswith("error: argument 'code'") and ep.messages[3]["status"] == "error"
    assert (ep.tool_calls, ep.tool_errors) == (2, 1) and ep.tool_time_s > 0
    assert "12" in tokenizer.decode(ep.completion_ids)  # the tool's output is in the episode, as context
    [out] = env.reward().score([Task(task.prompt, "12").sample(ep.text)])
    assert out.score == 1.0


def test_looping_tool_code_is_told_to_the_model_never_a_timeout(tokenizer):
    env = MathPython(tool_timeout_s=1)
    task = env.tasks("test")[0]
    policy = ScriptedPolicy(tokenizer, ["```python\nwhile True:\n    pass\n```", "I give up: \\boxed{0}"])
    [ep] = run_episodes(policy, env, [task], 1, _sampling(), EpisodeLimits(3, 4000, 10))
    assert ep.failure is None
    assert ep.messages[1]["status"] == "timeout" and "timed out after 1 s" in ep.messages[1]["content"]
    assert ep.tool_errors == 1


def test_tool_output_cannot_stand_in_for_the_answer(tokenizer):
    """Reward tampering: a tool result that prints the right \\boxed{} answer earns nothing; only the
    model's last message is graded."""
    env = MathPython(tool_timeout_s=2)
    task = Task(env.tasks("test")[0].prompt, "12", {})
    policy = ScriptedPolicy(tokenizer, ["```python\nprint('\\\\boxed{12}')\n```", "The answer is \\boxed{13}."])
    [ep] = run_episodes(policy, env, [task], 1, _sampling(), EpisodeLimits(3, 4000, 30))
    assert "\\boxed{12}" in ep.messages[1]["content"]
    timing = {"generation_time_s": 0.0, "generated_tokens": 0.0, "reward_time_s": 0.0, "reward_compute_s": 0.0}
    policy.turn = 0
    [r] = generate_and_score(policy, env.reward(), [task], 1, _sampling(), 1, timing, env=env, limits=EpisodeLimits(3, 4000, 30))
    assert r.outcome.status is Status.OK and r.outcome.score == 0.0
