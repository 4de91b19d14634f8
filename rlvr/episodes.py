"""Multi-turn episodes, token-exact: what the model was given is what a trainer trains on.

:func:`run_episodes` plays ``n`` episodes of each task of a
:class:`~rlvr.environments.multiturn.MultiTurnEnvironment` with any generator (it uses only
``generator.tokenizer`` and ``generator.generate``), task-major like ``generate``:

1. The first turn is one ``generate`` call over the tasks' prompts, ``n`` each, exactly as
   a single-turn step samples them (same prompt ids, same seed).
2. After each model turn but the last, ``env.respond`` answers every live episode, in
   parallel threads, under ``turn_timeout_s`` (:class:`EpisodeLimits`).
3. The next turn is ONE ``generate`` call for all live episodes, each given the token ids
   ``previous prompt ids + sampled ids + environment ids`` (a per-turn seed): the
   conversation is never rendered and tokenized again, so nothing the model sampled is
   re-tokenized differently (the drift behind TRL #5224 / #5144, veRL #3720 / #3960, rLLM #272).

The environment's ids are what the chat template writes AFTER an assistant turn's end: the
end-of-turn tail, the new messages, the generation prompt. :class:`ChatTurns` reads them off
a FIXED base conversation (a placeholder user message and assistant reply), rendered once
without and once with the new messages, and keeps the text after the assistant's
end-of-turn token. So templates that inject a system prompt (SmolLM2), add ``\\n`` after
``<|im_end|>``, group tool results into one user block (Qwen2.5), or render an assistant
turn differently once it is no longer the last (templates that strip reasoning from history)
all give the ids their own rendering would put there -- without ever touching the episode's
real history.

A turn cut at ``max_completion_length`` is closed with the template's end-of-turn tokens
(context, not sampled) and the episode goes on. A turn starts only if the episode fits
``max_episode_tokens`` with a whole turn's ``max_tokens`` more; otherwise the episode ends
with ``finish_reason="length"``.

An :class:`Episode` is a :class:`~rlvr.generation.Generation` whose ``completion_ids`` are
ALL tokens after the prompt (sampled and environment), with ``model_mask`` 1 exactly on the
sampled ones and ``logprobs`` 0 on the others; ``text`` is the last assistant message. A
trainer learns from the masked tokens only (:func:`rlvr.trainers.rollouts.batch_tensors`).
An environment that raises or answers late makes ``failure`` an ``ERROR`` / ``TIMEOUT``
:class:`~rlvr.rewards.Outcome`: the episode is reported and left out of training, the
batch goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlvr.environments.base import Task
from rlvr.environments.multiturn import MultiTurnEnvironment
from rlvr.generation import Generation, SamplingConfig, encode_prompt
from rlvr.rewards import Outcome, Reward, Sample, score_or_error

__all__ = [
    "ChatTurns",
    "Episode",
    "EpisodeLimits",
    "call_with_deadline",
    "episode_limits",
    "episode_metrics",
    "episode_sample",
    "episode_stats",
    "run_episodes",
    "sampled_mask",
    "score_episodes",
    "turn_seed",
]

# The base conversation's assistant reply: a marker no template changes and no tokenizer merges with its neighbours.
_MARK = "RLVRTURNMARK"
_BASE_USER = "RLVRBASEQUESTION"
_TEMPLATE_KEYS = ("role", "content", "name", "tool_call_id", "tool_calls")


@dataclass(frozen=True)
class EpisodeLimits:
    """How long an episode may go on.

    Attributes:
        max_turns: Most model turns.
        max_episode_tokens: Most tokens of prompt + every turn + environment messages; a
            turn starts only if a whole turn (``max_tokens``) still fits.
        turn_timeout_s: Seconds ``env.respond`` (and ``env.start``) may take per episode and turn.
    """

    max_turns: int = 3
    max_episode_tokens: int = 1024
    turn_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.max_episode_tokens < 2:
            raise ValueError(f"max_episode_tokens must be >= 2, got {self.max_episode_tokens}")
        if not self.turn_timeout_s > 0:
            raise ValueError(f"turn_timeout_s must be > 0, got {self.turn_timeout_s}")


@dataclass
class Episode(Generation):
    """One multi-turn episode (see the module docstring for ``completion_ids`` and ``text``).

    Attributes:
        model_mask: 1 on each token of ``completion_ids`` the model sampled, 0 on environment tokens.
        messages: The conversation after the prompt: assistant turns and environment messages.
        turns: Model turns taken.
        tool_calls / tool_errors / tool_time_s: Tool messages the environment answered with,
            those whose status was not ``ok``, and their seconds.
        failure: None, or the ``ERROR`` / ``TIMEOUT`` outcome of an environment that failed.
    """

    model_mask: list[int] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    tool_time_s: float = 0.0
    failure: Outcome | None = None


def episode_limits(
    env: Any,
    max_turns: int | None = None,
    max_episode_tokens: int = EpisodeLimits.max_episode_tokens,
    turn_timeout_s: float = EpisodeLimits.turn_timeout_s,
) -> EpisodeLimits | None:
    """The limits of ``env``'s episodes: None for a single-turn environment; for a
    :class:`~rlvr.environments.multiturn.MultiTurnEnvironment`, ``max_turns`` (else the
    environment's own), ``max_episode_tokens`` and ``turn_timeout_s``.

    Raises ValueError for ``max_turns`` > 1 on a single-turn environment, an environment whose
    ``max_turns`` is not a positive integer, and a ``turn_timeout_s`` not longer than the
    environment's own sandbox deadlines (``respond_deadline_s``: looping model code would then
    make the episode TIMEOUT instead of being told to the model).
    """
    name = getattr(env, "name", None)
    if not isinstance(env, MultiTurnEnvironment):
        if max_turns is not None and max_turns > 1:
            raise ValueError(
                f"max_turns {max_turns}, but environment {name!r} is single-turn (it never answers the model); "
                "leave max_turns unset or use a multi-turn environment (python -m rlvr list)"
            )
        return None
    turns = max_turns if max_turns is not None else env.max_turns
    if not isinstance(turns, int) or isinstance(turns, bool) or turns < 1:
        raise ValueError(f"environment {name!r} has max_turns={turns!r}; it must be a positive integer (or give max_turns)")
    deadline = env.respond_deadline_s()
    if deadline is not None and deadline >= turn_timeout_s:
        raise ValueError(
            f"turn_timeout_s {turn_timeout_s:g} s is not longer than the {deadline:g} s environment {name!r} may take to "
            "answer by its own sandbox deadlines; raise turn_timeout_s or shorten the sandbox limits"
        )
    return EpisodeLimits(max_turns=turns, max_episode_tokens=max_episode_tokens, turn_timeout_s=turn_timeout_s)


def sampled_mask(generation: Generation) -> list[int]:
    """1 on each completion token the policy sampled: every token of a plain generation, the
    ``model_mask`` of an :class:`Episode` (0 on the environment's tokens)."""
    mask = getattr(generation, "model_mask", None)
    n = len(generation.completion_ids)
    if mask is None:
        return [1] * n
    if len(mask) != n:
        raise ValueError(f"an episode's model_mask has {len(mask)} entries for {n} completion tokens")
    return [int(bool(m)) for m in mask]


def episode_sample(task: Task, episode: Generation) -> Sample:
    """What the reward scores: the task's prompt, the last assistant message, the task's reference,
    and (for an :class:`Episode`) ``info["messages"]`` / ``info["turns"]``."""
    if not isinstance(episode, Episode):
        return task.sample(episode.text)
    info = {**task.info, "messages": episode.messages, "turns": episode.turns}
    return Sample(task.prompt, episode.text, task.reference, info)


def score_episodes(reward: Reward, tasks: Sequence[Task], generations: Sequence[Generation]) -> list[Outcome]:
    """Each generation's outcome against ``tasks[g.prompt_index]``: an episode whose environment
    failed keeps its ``failure`` (``ERROR`` / ``TIMEOUT``) and is not scored; the others are scored
    in one batch on :func:`episode_sample` (a reward that raises makes them ``ERROR``, never 0)."""
    outcomes: list[Outcome | None] = [getattr(g, "failure", None) for g in generations]
    todo = [i for i, o in enumerate(outcomes) if o is None]
    if todo:
        scored = score_or_error(reward, [episode_sample(tasks[generations[i].prompt_index], generations[i]) for i in todo])
        for i, o in zip(todo, scored):
            outcomes[i] = o
    return [o for o in outcomes if o is not None]


def episode_metrics(stats: Sequence[Mapping[str, float] | None]) -> dict[str, float]:
    """A batch's episode metrics from :func:`episode_stats` (None entries, single-turn
    generations, are left out; empty when there is no episode): ``turns_mean``,
    ``tool_calls_mean``, and the totals ``tool_errors``, ``tool_time_s``, ``masked_tokens``."""
    episodes = [s for s in stats if s is not None]
    if not episodes:
        return {}
    metrics = {
        "turns_mean": sum(e["turns"] for e in episodes) / len(episodes),
        "tool_calls_mean": sum(e["tool_calls"] for e in episodes) / len(episodes),
    }
    for key in ("tool_errors", "tool_time_s", "masked_tokens"):
        metrics[key] = float(sum(e[key] for e in episodes))
    return metrics


def episode_stats(generation: Generation) -> dict[str, float] | None:
    """An episode's ``turns``, ``tool_calls``, ``tool_errors``, ``tool_time_s`` and ``masked_tokens``
    (environment tokens: context, not trained on); None for a single-turn generation."""
    if not isinstance(generation, Episode):
        return None
    return {
        "turns": float(generation.turns),
        "tool_calls": float(generation.tool_calls),
        "tool_errors": float(generation.tool_errors),
        "tool_time_s": float(generation.tool_time_s),
        "masked_tokens": float(len(generation.completion_ids) - sum(generation.model_mask)),
    }


def turn_seed(seed: int, turn: int) -> int:
    """The sampling seed of turn ``turn`` (0-based) of a call seeded ``seed``: ``seed`` itself for
    the first turn (so one turn samples what a single-turn call samples), a hash after it."""
    if turn == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/turn/{turn}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x3FFFFFFF


class ChatTurns:
    """The token ids a chat template puts between an assistant turn and the next one.

    Args:
        tokenizer: The policy's tokenizer, with its chat template.
        tools: Tool schemas the template renders (as in the prompt), or None.
        stop_ids: The ids the generator stops on (the tokenizer's EOS is always one).

    Attributes:
        closing_text / closing_ids: What ends an assistant turn in the template (``<|im_end|>``,
            ``<|eot_id|>``, ...): appended, as context, after a turn that did not end with it.
        closing_stop_ids: The stop ids whose text is the closing's end-of-turn token.
    """

    def __init__(self, tokenizer: Any, tools: Sequence[Mapping[str, Any]] | None = None, stop_ids: Sequence[int] = ()) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("multi-turn episodes need a tokenizer with a chat_template (set tokenizer.chat_template)")
        self.tokenizer = tokenizer
        self.tools = list(tools) if tools else None
        self._base = [{"role": "user", "content": _BASE_USER}, {"role": "assistant", "content": _MARK}]
        text = self._render(self._base, generation_prompt=False)
        if text.count(_MARK) != 1:
            raise ValueError("the chat template does not render an assistant message's content verbatim; multi-turn episodes need it to")
        after = text[text.index(_MARK) + len(_MARK) :]
        ids = set(stop_ids)
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        texts = {i: tokenizer.decode([i]) for i in ids}
        found = [(after.find(t), -len(t), t) for t in set(texts.values()) if t and t in after]
        if not found:
            raise ValueError(
                f"the chat template ends an assistant turn with {after!r}, which holds none of the model's stop tokens "
                f"({sorted(set(texts.values()))}); set tokenizer.eos_token to the template's end-of-turn token"
            )
        at, _, stop_text = min(found)
        self.closing_text = after[: at + len(stop_text)]
        self.closing_ids = self._encode(self.closing_text)
        self.closing_stop_ids = {i for i, t in texts.items() if t == stop_text}

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        kwargs = {"tools": self.tools} if self.tools else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ends_turn(self, completion_ids: Sequence[int]) -> bool:
        """Whether a sampled turn ended with the template's end-of-turn token (no closing needed)."""
        return bool(completion_ids) and completion_ids[-1] in self.closing_stop_ids

    def after_turn(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Ids of the template's text after an assistant turn's end-of-turn token, then
        ``messages``, then the generation prompt. Raises ValueError when the template cannot
        render them after an assistant turn."""
        clean = [{k: m[k] for k in _TEMPLATE_KEYS if k in m} for m in messages]
        text = self._render([*self._base, *clean], generation_prompt=True)
        at = text.find(_MARK)
        rest = text[at + len(_MARK) :] if at >= 0 else ""
        if at < 0 or not rest.startswith(self.closing_text):
            raise ValueError(
                f"the chat template does not close an assistant turn with {self.closing_text!r} when messages follow it; "
                "its turns cannot be joined token by token"
            )
        return self._encode(rest[len(self.closing_text) :])


@dataclass
class _Live:
    """An episode being played."""

    task: int
    prompt_ids: list[int]
    ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    state: Any = None
    text: str = ""
    turns: int = 0
    ended_turn: bool = True
    finish: str = "stop"
    open: bool = True
    tool_calls: int = 0
    tool_errors: int = 0
    tool_time_s: float = 0.0
    failure: Outcome | None = None
    weight_version: int | None = None  # the oldest weights any of its turns was sampled from

    def add(self, ids: Sequence[int], logprobs: Sequence[float] | None, sampled: bool) -> None:
        self.ids.extend(ids)
        lps = list(logprobs or [])
        self.logprobs.extend((lps + [0.0] * len(ids))[: len(ids)] if sampled else [0.0] * len(ids))
        self.mask.extend([1 if sampled else 0] * len(ids))

    def fail(self, outcome: Outcome) -> None:
        self.failure, self.open = outcome, False

    def episode(self) -> Episode:
        n = len(self.prompt_ids)
        return Episode(
            self.text, self.prompt_ids, self.ids[n:], self.logprobs, self.finish, self.task,
            model_mask=self.mask, messages=self.messages, turns=self.turns, tool_calls=self.tool_calls,
            tool_errors=self.tool_errors, tool_time_s=self.tool_time_s, failure=self.failure,
            weight_version=self.weight_version or 0,
        )  # fmt: skip


def call_with_deadline(fns: Sequence[Callable[[], Any]], timeout_s: float, what: str) -> list[tuple[Any, Outcome | None]]:
    """Run ``fns`` at once, each in its own daemon thread; ``(value, None)`` for one that returned
    within ``timeout_s``, ``(None, ERROR outcome)`` for one that raised, ``(None, TIMEOUT outcome)``
    for one still running (abandoned: a daemon thread never keeps the process from exiting)."""
    results: list[tuple[Any, Outcome | None]] = [(None, None)] * len(fns)
    events = [threading.Event() for _ in fns]

    def target(i: int) -> None:
        try:
            results[i] = (fns[i](), None)
        except Exception as exc:  # noqa: BLE001 - any failure of the environment is this episode's ERROR
            results[i] = (None, Outcome.error(f"{what} raised {type(exc).__name__}: {str(exc)[:300]}"))
        finally:
            events[i].set()

    for i in range(len(fns)):
        threading.Thread(target=target, args=(i,), daemon=True, name=f"rlvr-episode-{i}").start()
    deadline = time.monotonic() + timeout_s
    out = []
    for i, event in enumerate(events):
        if event.wait(max(0.0, deadline - time.monotonic())):
            out.append(results[i])
        else:
            out.append((None, Outcome.timeout(f"{what} did not answer within {timeout_s:g} s")))
    return out


def _check_messages(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return f"respond must return a non-empty list of messages or None, got {type(value).__name__} {value!r:.80}"
    for m in value:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"each message needs a 'role' and a text 'content', got {m!r:.120}"
    return None


def run_episodes(
    generator: Any,
    env: MultiTurnEnvironment,
    tasks: Sequence[Task],
    n: int,
    sampling: SamplingConfig,
    limits: EpisodeLimits,
    timing: dict[str, float] | None = None,
) -> list[Episode]:
    """``n`` episodes per task, task-major (see the module docstring).

    ``timing``, when given, accumulates ``generation_time_s``, ``generated_tokens`` (sampled)
    and ``env_time_s`` (waiting on ``respond``).
    """
    tok = generator.tokenizer
    schemas = env.tool_schemas() or None
    turns = ChatTurns(tok, schemas, sorted(getattr(generator, "stop_ids", ()) or ()))
    prompts = [encode_prompt(tok, t.prompt, schemas) for t in tasks]
    eps = [_Live(i, prompts[i], list(prompts[i])) for i in range(len(tasks)) for _ in range(n)]
    timing = timing if timing is not None else {}
    for key in ("generation_time_s", "generated_tokens", "env_time_s"):
        timing.setdefault(key, 0.0)
    if type(env).start is not MultiTurnEnvironment.start:
        start = time.perf_counter()
        started = call_with_deadline([lambda t=tasks[e.task]: env.start(t) for e in eps], limits.turn_timeout_s, f"{env.name}.start")
        timing["env_time_s"] += time.perf_counter() - start
        for e, (state, failure) in zip(eps, started):
            e.state = state
            if failure is not None:
                e.fail(failure)
    for turn in range(limits.max_turns):
        live = [e for e in eps if e.open]
        if not live:
            break
        start = time.perf_counter()
        if turn == 0:  # what a single-turn step samples: every task's prompt, n each, one call
            gens = generator.generate(prompts, n, sampling)
            gens = [g for e, g in zip(eps, gens) if e.open]
        else:
            gens = generator.generate([e.ids for e in live], 1, dataclasses.replace(sampling, seed=turn_seed(sampling.seed, turn)))
        timing["generation_time_s"] += time.perf_counter() - start
        timing["generated_tokens"] += sum(len(g.completion_ids) for g in gens)
        for e, g in zip(live, gens):
            e.add(g.completion_ids, g.logprobs, sampled=True)
            e.weight_version = g.weight_version if e.weight_version is None else min(e.weight_version, g.weight_version)
            e.messages.append({"role": "assistant", "content": g.text})
            e.text, e.turns = g.text, e.turns + 1
            e.ended_turn = turns.ends_turn(g.completion_ids)
            e.finish = "length" if g.finish_reason == "length" else "stop"
        if turn == limits.max_turns - 1:
            break
        start = time.perf_counter()
        replies = call_with_deadline(
            [lambda e=e: env.respond(tasks[e.task], list(e.messages), e.state) for e in live], limits.turn_timeout_s, f"{env.name}.respond"
        )
        timing["env_time_s"] += time.perf_counter() - start
        for e, (reply, failure) in zip(live, replies):
            if failure is not None:
                e.fail(failure)
                continue
            if reply is None:
                e.open = False
                continue
            problem = _check_messages(reply)
            if problem is None:
                try:
                    env_ids = turns.after_turn(reply)
                except Exception as exc:  # noqa: BLE001 - a template that cannot render this reply fails this episode only
                    problem = f"{type(exc).__name__}: {str(exc)[:300]}"
            if problem is not None:
                e.fail(Outcome.error(f"{env.name}.respond: {problem}"))
                continue
            e.messages.extend(dict(m) for m in reply)
            for m in reply:
                if m["role"] == "tool":
                    e.tool_calls += 1
                    e.tool_errors += m.get("status", "ok") != "ok"
                    elapsed = m.get("elapsed_s")
                    e.tool_time_s += float(elapsed) if isinstance(elapsed, (int, float)) else 0.0
            closing = [] if e.ended_turn else turns.closing_ids
            if len(e.ids) + len(closing) + len(env_ids) + sampling.max_tokens > limits.max_episode_tokens:
                e.open, e.finish = False, "length"  # the next turn would not fit: the episode ends here
                continue
            e.add(closing + env_ids, None, sampled=False)
    return [e.episode() for e in eps]
