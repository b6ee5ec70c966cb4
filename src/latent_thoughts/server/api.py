"""Completions and chat answered by a transformers engine, as plain dict-in, dict-out functions.

The HTTP routes and the batch runner both use :class:`ModelAPI`, so a batch line gets exactly the
body the online endpoint would have returned. Two deliberate extensions over the OpenAI wire format:
``logprobs`` objects carry ``token_ids`` (exact ids, which text tokens cannot give back), and sampled
tokens' log-probabilities are under the sampling distribution (after banned ids, temperature and
top-p), as the engine protocol promises. ``top_logprobs`` lists only the chosen token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from latent_thoughts.engines.base import ChatMessage, Sample
from latent_thoughts.engines.transformers_engine import TransformersEngine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.server.wire import (
    CHARS_PER_TOKEN,
    APIError,
    Limits,
    SamplingParams,
    get_field,
    logprobs_field,
    messages_of,
    new_id,
    now,
    prompts_of,
    sampling_params,
)


def shared_prefix_groups(prompts: Sequence[Sequence[int]]) -> list[tuple[int, list[int]]]:
    """Runs of consecutive ``prompts`` scored after one shared prefix: ``(prefix length, indices)``.

    A prompt joins the run before it when the prefix they share is at least half of the run's (so a
    run never trades most of its sharing for one more member); a run of one has the whole prompt as
    its prefix. Any grouping gives the same log-probabilities up to float rounding.
    """
    groups: list[tuple[int, list[int]]] = []
    for index, seq in enumerate(prompts):
        if groups:
            length, members = groups[-1]
            first = prompts[members[0]]
            common = 0
            for a, b in zip(first[:length], seq, strict=False):
                if a != b:
                    break
                common += 1
            if common >= 1 and 2 * common >= length:
                groups[-1] = (common, [*members, index])
                continue
        groups.append((len(seq), [index]))
    return groups


class ModelAPI:
    """Completions and chat of one engine, served under one model name, within ``limits``.

    The limits' ``max_tokens`` defaults to the engine's context length less one, and
    ``max_prompt_tokens`` to four context lengths.
    """

    def __init__(self, engine: TransformersEngine, model_name: str, limits: Limits | None = None) -> None:
        self.engine = engine
        self.model_name = model_name
        self._pieces: dict[int, str] = {}
        limits = limits or Limits()
        context = engine.max_context_tokens
        max_prompt_tokens = limits.max_prompt_tokens if limits.max_prompt_tokens is not None else 4 * context
        self.limits = dataclasses.replace(
            limits,
            max_tokens=limits.max_tokens if limits.max_tokens is not None else max(context - 1, 0),
            max_prompt_tokens=max_prompt_tokens,
            max_prompt_chars=(
                limits.max_prompt_chars
                if limits.max_prompt_chars is not None
                else CHARS_PER_TOKEN * max_prompt_tokens
            ),
        )

    def _check_prompts(self, prompts: Sequence[Any], n: int) -> None:
        """Refuse more prompts, or more sequences in all, than the limits allow."""
        if len(prompts) > self.limits.max_prompts:
            raise APIError(
                f"at most {self.limits.max_prompts} prompts per request on this server, got {len(prompts)}",
                param="prompt",
            )
        if len(prompts) * n > self.limits.max_sequences:
            raise APIError(
                f"prompts x n must be at most {self.limits.max_sequences} on this server, got {len(prompts) * n}",
                param="n",
            )

    def _check_length(self, ids: Sequence[int], index: int, param: str) -> None:
        most = self.limits.max_prompt_tokens
        if most is not None and len(ids) > most:
            raise APIError(
                f"prompt {index} has {len(ids)} tokens, more than this server's limit of {most}", param=param
            )

    def _check_chars(self, chars: int, what: str, param: str) -> None:
        """Refuse text too long to be within the token limit, before spending time tokenising it."""
        most = self.limits.max_prompt_chars
        if most is not None and chars > most:
            raise APIError(
                f"{what} has {chars:,} characters, more than this server's limit of {most:,} "
                f"(at most {self.limits.max_prompt_tokens} tokens)",
                param=param,
            )

    def check_model(self, body: dict[str, Any]) -> None:
        """A request naming another model is a 404, as vLLM answers."""
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise APIError(
                f"The model `{model}` does not exist (this server has {self.model_name!r})", 404, "model"
            )

    def models(self) -> dict[str, Any]:
        """The ``/v1/models`` list. ``max_model_len`` (vLLM's field) is the engine's context length, the
        longest sequence it computes (prompt and completion, or an echoed prompt): a client that lays
        out sequences itself (the E-step) reads it, so that it never asks for more than the server
        does."""
        entry = {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "latent-thoughts",
            "max_model_len": self.engine.max_context_tokens,
        }
        return {"object": "list", "data": [entry]}

    def _piece(self, token: int) -> str:
        """The text of one token id (decoded once per id: an echo lists every prompt token twice)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.engine.decode([token])
        return piece

    def _token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self._piece(i) for i in ids]

    def _echo_scores(self, prompts: Sequence[list[int]]) -> list[list[float]]:
        """Log-probabilities of every prompt token after the first (an echo's), computing a prefix that
        consecutive prompts share once (:func:`shared_prefix_groups`): its own tokens in one pass,
        then each prompt's rest after it by the engine's shared-context scoring. The E-step's K
        sequences of a chunk share its prompt; scoring each whole cost K passes over it."""
        most = self.engine.max_context_tokens
        for i, seq in enumerate(prompts):
            if len(seq) < 1:
                raise APIError(f"prompt {i} is empty", param="prompt")
            if len(seq) > most:
                raise APIError(
                    f"prompt {i} has {len(seq)} tokens, more than this model's context of {most} "
                    "(max_model_len): an echoed prompt is scored whole",
                    param="prompt",
                )
        groups = shared_prefix_groups(prompts)
        prefixes = [prompts[members[0]][:length] for length, members in groups]
        heads = self.engine.score([prefix[:1] for prefix in prefixes], [prefix[1:] for prefix in prefixes])
        rests = self.engine.score_groups(
            [
                (prefix, [prompts[i][len(prefix) :] for i in members])
                for prefix, (_, members) in zip(prefixes, groups, strict=True)
            ]
        )
        scores: list[list[float]] = [[] for _ in prompts]
        for head, rest, (_, members) in zip(heads, rests, groups, strict=True):
            for i, tail in zip(members, rest, strict=True):
                scores[i] = [*head.token_logprobs, *tail.token_logprobs]
        return scores

    def _logprobs(self, ids: list[int], values: list[float | None]) -> dict[str, Any]:
        tokens = self._token_strings(ids)
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": values,
            "top_logprobs": [None if v is None else {t: v} for t, v in zip(tokens, values, strict=True)],
            "text_offset": offsets,
            "token_ids": ids,
        }

    def completions(
        self, body: dict[str, Any], should_stop: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """A ``/v1/completions`` response body for request ``body``.

        ``should_stop`` is passed to the engine, which gives up (``Cancelled``) when it says so.
        """
        self.check_model(body)
        prompts = prompts_of(body)
        params = sampling_params(body, default_max_tokens=16, limits=self.limits)
        self._check_prompts(prompts, params.n)
        echo = bool(get_field(body, "echo", bool, False))
        logprobs = logprobs_field(body, "logprobs", self.limits)
        prompt_logprobs = logprobs_field(body, "prompt_logprobs", self.limits)
        engine = self.engine
        try:
            ids = []
            for i, prompt in enumerate(prompts):
                self._check_length(prompt if isinstance(prompt, list) else (), i, "prompt")
                if isinstance(prompt, str):
                    self._check_chars(len(prompt), f"prompt {i}", "prompt")
                ids.append(engine.encode(prompt, where=f"prompt {i}"))
                self._check_length(ids[-1], i, "prompt")
            prompt_scores: list[list[float]] = []
            if echo or prompt_logprobs is not None:
                prompt_scores = self._echo_scores(ids)
            samples: list[list[Sample]]
            if params.max_tokens == 0:
                samples = [[Sample([], "", [], "length") for _ in range(params.n)] for _ in ids]
            else:
                samples = engine.sample(
                    ids,
                    params.n,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_new_tokens=params.max_tokens,
                    stop=params.stop,
                    seed=params.seed,
                    stop_on_eos=not params.ignore_eos,
                    banned_ids=params.banned_ids,
                    should_stop=should_stop,
                )
        except LatentThoughtsError as exc:
            raise APIError(str(exc), param="prompt") from None
        choices = []
        for p, (prompt, seq, group) in enumerate(zip(prompts, ids, samples, strict=True)):
            for j, sample in enumerate(group):
                text = sample.text
                choice: dict[str, Any] = {"index": p * params.n + j, "finish_reason": sample.finish_reason}
                if echo:
                    prompt_text = prompt if isinstance(prompt, str) else engine.decode(seq)
                    text = prompt_text + text
                if logprobs is not None:
                    token_ids, values = list(sample.token_ids), list[float | None](sample.token_logprobs)
                    if echo:
                        token_ids = seq + token_ids
                        values = [None, *prompt_scores[p], *values]
                    choice["logprobs"] = self._logprobs(token_ids, values)
                else:
                    choice["logprobs"] = None
                if prompt_logprobs is not None:
                    choice["prompt_logprobs"] = [None] + [
                        {str(t): {"logprob": v, "decoded_token": self._piece(t)}}
                        for t, v in zip(seq[1:], prompt_scores[p], strict=True)
                    ]
                    choice["prompt_token_ids"] = seq
                choice["text"] = text
                choice["token_ids"] = list(sample.token_ids)
                choices.append(choice)
        # What the model saw: a scored prompt whole, a sampled one after cutting it to fit the context.
        scored = echo or prompt_logprobs is not None
        prompt_tokens = sum(
            len(seq) if scored else engine.prompt_length(seq, params.max_tokens) for seq in ids
        )
        completion_tokens = sum(len(s.token_ids) for group in samples for s in group)
        return {
            "id": new_id("cmpl-"),
            "object": "text_completion",
            "created": now(),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def chat_many(
        self, bodies: Sequence[dict[str, Any]], should_stop: Callable[[], bool] | None = None
    ) -> list[dict[str, Any] | APIError]:
        """Answer several chat requests, batching those with equal sampling options; errors per request."""
        results: list[dict[str, Any] | APIError] = [APIError("not answered", 500)] * len(bodies)
        groups: dict[SamplingParams, list[tuple[int, list[ChatMessage]]]] = {}
        for i, body in enumerate(bodies):
            try:
                self.check_model(body)
                default = min(1024, max(self.engine.max_context_tokens // 2, 1))
                params = sampling_params(body, default, self.limits)
                conversation = messages_of(body)
                self._check_prompts([conversation], params.n)
                chars = sum(len(m["role"]) + len(m["content"]) for m in conversation)
                self._check_chars(chars, "the conversation", "messages")
                try:
                    ids, _ = self.engine.chat_prompt(conversation)
                except LatentThoughtsError as exc:
                    raise APIError(str(exc), param="messages") from None
                most = self.limits.max_prompt_tokens
                if most is not None and len(ids) > most:
                    raise APIError(
                        f"the conversation has {len(ids)} tokens, more than this server's limit of {most}",
                        param="messages",
                    )
                groups.setdefault(params, []).append((i, conversation))
            except APIError as exc:
                results[i] = exc
        for params, members in groups.items():
            try:
                replies = self.engine.chat(
                    [conversation for _, conversation in members],
                    params.n,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_new_tokens=params.max_tokens,
                    seed=params.seed,
                    stop=params.stop,
                    banned_ids=params.banned_ids,
                    should_stop=should_stop,
                )
            except LatentThoughtsError as exc:
                for i, _ in members:
                    results[i] = APIError(str(exc), param="messages")
                continue
            for (i, _), group in zip(members, replies, strict=True):
                prompt_tokens = group[0].prompt_tokens if group else 0
                completion_tokens = sum(r.completion_tokens for r in group)
                results[i] = {
                    "id": new_id("chatcmpl-"),
                    "object": "chat.completion",
                    "created": now(),
                    "model": self.model_name,
                    "choices": [
                        {
                            "index": j,
                            "message": {"role": "assistant", "content": reply.text},
                            "logprobs": None,
                            "finish_reason": reply.finish_reason,
                        }
                        for j, reply in enumerate(group)
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
        return results

    def chat(self, body: dict[str, Any], should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """A ``/v1/chat/completions`` response body for request ``body`` (``should_stop`` as in completions)."""
        result = self.chat_many([body], should_stop)[0]
        if isinstance(result, APIError):
            raise result
        return result
