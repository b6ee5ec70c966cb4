"""An engine over any Hugging Face causal LM, on CPU or CUDA, with its own decode loop.

Why not ``model.generate``: the E-step needs (a) the log-probability of every sampled token under
exactly the distribution it was drawn from, (b) the K samples of one prompt to share one prefill of
that prompt, and (c) stopping on the end-of-latent token; evaluation needs banned tokens. The decode
loop (:mod:`latent_thoughts.engines.sampling`) over a preallocated ``DynamicCache``
(:mod:`latent_thoughts.engines.cache`) gives all of it and lets several prompts' samples share one
batch. Scoring has two forms: :meth:`TransformersEngine.score` (pairs, one left-padded forward pass
per batch) and :meth:`TransformersEngine.score_many` (one context prefilled once, its cache shared
by all continuations: the K thoughts of a chunk).

Randomness is a pure function of (seed, prompt token ids, sample index), and a prompt's arithmetic
does not depend on the other prompts of its batch (its padded width is a function of its own length,
:func:`~latent_thoughts.engines.sampling.padded_width`), so a restarted or re-sharded E-step job, or
one run through ``latent-thoughts serve``, reproduces the same thoughts, and batched calls equal
per-prompt calls, in bf16 as in fp32.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from latent_thoughts.config import StageConfig
from latent_thoughts.engines.base import ChatMessage, ChatReply, Prompt, Sample, Score, Usage
from latent_thoughts.engines.cache import new_cache
from latent_thoughts.engines.padding import left_pad
from latent_thoughts.engines.sampling import (
    PAD_MULTIPLE,
    Row,
    SamplingSettings,
    plan_batches,
    plan_score_batches,
    sample_batch,
)
from latent_thoughts.errors import LatentThoughtsError

log = logging.getLogger(__name__)

PLAIN_CHAT_STOPS = ("\nuser:", "\nsystem:")
"""Stop strings of the plain-text chat template (used when a tokenizer has no chat template)."""


class TransformersEngineConfig(StageConfig):
    """Options of :class:`TransformersEngine`.

    ``batch_tokens`` bounds memory: a sampling batch holds at most ``batch_tokens`` cached positions
    (rows x (padded prompt + max_new_tokens); prompts are padded to a multiple of ``pad_multiple``) and a
    scoring batch at most ``batch_tokens`` input tokens (its logits hold at most ``batch_tokens x
    vocab`` floats).
    """

    model: str = Field(default="", description="folder of a Hugging Face causal LM (config.json + weights)")
    tokenizer: str | None = Field(default=None, description="tokenizer folder; default: the model folder")
    device: str = Field(
        default="auto", description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1'"
    )
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="'auto': bf16 where the device supports it, else fp32"
    )
    batch_tokens: int = Field(default=16384, gt=0, description="memory bound of one batch, in tokens")
    pad_multiple: int = Field(
        default=PAD_MULTIPLE,
        ge=0,
        description="sampling pads a prompt to a multiple of this and batches prompts of one padded width, "
        "so that its draws do not depend on the other prompts of its batch (a server and this process "
        "draw alike); 0: pad to the batch's longest prompt (fuller batches, batch-dependent rounding)",
    )
    max_context_tokens: int | None = Field(
        default=None, gt=1, description="longest sequence; default the model's max_position_embeddings"
    )
    add_bos: bool = Field(default=True, description="prepend BOS to text prompts and text contexts")
    stop_on_eos: bool = Field(default=True, description="also stop sampling at the model's EOS token(s)")
    seed: int | None = Field(
        default=None, description="seed used when a call passes none (None: fresh randomness)"
    )
    attn_implementation: str | None = Field(
        default=None, description="e.g. 'sdpa' or 'eager'; default the model's"
    )


def resolve_device(name: str) -> torch.device:
    """The torch device for a config value ('auto' picks CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LatentThoughtsError(
            f"device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LatentThoughtsError(f"device: {name!r} requested but CUDA is not available")
    return device


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The compute dtype: bf16 for 'bf16', or for 'auto' where the device runs bf16 natively."""
    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


class TransformersEngine:
    """The :class:`~latent_thoughts.engines.base.Engine` protocol over a Hugging Face causal LM.

    Build it from a config (``TransformersEngine(TransformersEngineConfig(model="path"))``) or from
    objects already in memory (``TransformersEngine(config, model=model, tokenizer=tokenizer)``); a
    tokenizer is only needed for text prompts, text output and chat. Calls are serialised by a lock,
    so one engine can serve several threads (the HTTP server does).
    """

    def __init__(
        self,
        config: TransformersEngineConfig | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        """Load the model and tokenizer named by ``config`` unless given as objects."""
        self.config = config or TransformersEngineConfig()
        self.torch_device = resolve_device(self.config.device)
        self.device = str(self.torch_device)
        self.compute_dtype = resolve_dtype(self.config.dtype, self.torch_device)
        if model is None:
            if not self.config.model:
                raise LatentThoughtsError("model: no model folder configured (set model=PATH)")
            model = self._load_model(self.config.model)
        if tokenizer is None and (self.config.tokenizer or self.config.model):
            from latent_thoughts.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(self.config.tokenizer or self.config.model)
        self.model = model.to(self.torch_device).eval()
        self.tokenizer = tokenizer
        self.usage = Usage()
        self._lock = threading.Lock()
        model_config = self.model.config
        limit = self.config.max_context_tokens or getattr(model_config, "max_position_embeddings", None)
        self.max_context_tokens = int(limit or 2048)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        # The pad id only fills masked positions; any valid id works when the model has none.
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        if pad is None:
            pad = getattr(model_config, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.bos_id = self._bos_id()
        self.eos_ids = self._eos_ids()
        parameters = inspect.signature(self.model.forward).parameters
        # transformers v5 renamed ``past_key_values`` to ``cache``; support both spellings.
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in parameters
        # The full path, not the folder name: EM iterations all save to ``iter_t/model``, and the
        # identity goes into sample cache keys.
        name = self.config.model or getattr(model_config, "_name_or_path", "") or type(self.model).__name__
        if Path(name).exists():
            name = str(Path(name).resolve())
        dtype_name = "bf16" if self.compute_dtype == torch.bfloat16 else "fp32"
        self.identity = f"transformers:{name}:{dtype_name}"

    # ------------------------------------------------------------------ loading and encoding
    def _load_model(self, path: str) -> Any:
        """Load the model; on CUDA with bf16 the weights are loaded in bf16 (half the memory)."""
        from latent_thoughts.modeling import load_causal_lm

        kwargs: dict[str, Any] = {}
        if self.torch_device.type == "cuda" and self.compute_dtype == torch.bfloat16:
            kwargs["dtype"] = torch.bfloat16
        if self.config.attn_implementation:
            kwargs["attn_implementation"] = self.config.attn_implementation
        return load_causal_lm(path, **kwargs)

    def _bos_id(self) -> int | None:
        """The BOS id from the tokenizer, else from the model config."""
        bos = getattr(self.tokenizer, "bos_token_id", None) if self.tokenizer is not None else None
        if bos is None:
            bos = getattr(self.model.config, "bos_token_id", None)
        return int(bos) if isinstance(bos, int) else None

    def _eos_ids(self) -> set[int]:
        """Every id the model treats as end of sequence (tokenizer EOS and generation_config's list)."""
        found: set[int] = set()
        candidates: list[Any] = [getattr(self.tokenizer, "eos_token_id", None) if self.tokenizer else None]
        generation_config = getattr(self.model, "generation_config", None)
        candidates.append(getattr(generation_config, "eos_token_id", None))
        candidates.append(getattr(self.model.config, "eos_token_id", None))
        for value in candidates:
            if isinstance(value, int):
                found.add(value)
            elif isinstance(value, (list, tuple)):
                found.update(int(v) for v in value)
        return found

    def _require_tokenizer(self, what: str) -> Any:
        if self.tokenizer is None:
            raise LatentThoughtsError(f"{what} needs a tokenizer, and this engine has none (pass token ids)")
        return self.tokenizer

    def encode(self, prompt: Prompt, *, bos: bool = True, where: str = "prompt") -> list[int]:
        """Token ids of a prompt: text is tokenised (with BOS when ``bos`` and configured), ids checked."""
        if isinstance(prompt, str):
            tokenizer = self._require_tokenizer(f"text {where}")
            ids = list(tokenizer.encode(prompt, add_special_tokens=False))
            if bos and self.config.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
                ids.insert(0, self.bos_id)
            return ids
        try:
            ids = [int(token) for token in prompt]
        except (TypeError, ValueError):
            raise LatentThoughtsError(
                f"{where}: expected text or a list of token ids, got {prompt!r:.80}"
            ) from None
        bad = [token for token in ids if not 0 <= token < self.vocab_size]
        if bad:
            raise LatentThoughtsError(
                f"{where}: token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})"
            )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens kept, so latent markers stay visible); '' without a tokenizer."""
        if self.tokenizer is None or not ids:
            return ""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    # ------------------------------------------------------------------ model calls
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast where configured; weights stay as loaded (fp32 on CPU)."""
        if self.compute_dtype == torch.bfloat16:
            return torch.autocast(device_type=self.torch_device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
        keep: int,
    ) -> torch.Tensor:
        """One forward pass; returns the logits of the last ``keep`` positions (0 = all)."""
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": cache is not None,
        }
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
        if self._has_logits_to_keep and keep:
            kwargs["logits_to_keep"] = keep
        with self._autocast():
            logits = self.model(**kwargs).logits
        if keep and logits.shape[1] > keep:
            logits = logits[:, -keep:]
        return logits

    # ------------------------------------------------------------------ sampling
    def prompt_length(self, ids: Sequence[int], max_new_tokens: int) -> int:
        """How many tokens of a prompt of ``ids`` the model sees (longer prompts are cut from the front)."""
        return max(
            1, min(len(ids), self.max_context_tokens - max_new_tokens)
        )  # an empty prompt starts at BOS

    def _truncate_prompt(self, ids: list[int], max_new_tokens: int, index: int) -> list[int]:
        """Keep the end of a prompt so that prompt + max_new_tokens fits the context."""
        room = self.max_context_tokens - max_new_tokens
        if room < 1:
            raise LatentThoughtsError(
                f"max_new_tokens={max_new_tokens} leaves no room for prompt {index} "
                f"within max_context_tokens={self.max_context_tokens}"
            )
        if len(ids) > room:
            log.debug("prompt %d: %d tokens, keeping the last %d", index, len(ids), room)
            return ids[-room:]
        return ids

    def sample(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        stop: Sequence[str | int] = (),
        seed: int | None = None,
        stop_on_eos: bool | None = None,
        banned_ids: Sequence[int] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[Sample]]:
        """Draw ``n`` samples for each prompt; returns one list of ``n`` samples per prompt.

        ``temperature`` 0 is greedy decoding (each token's log-probability is then 0: the sampling
        distribution is a point mass). ``stop`` holds token ids (the sample ends with that token,
        included) and strings (the text is cut before the string; the token ids run through the
        token that completed it). ``token_logprobs`` are under the sampling distribution after
        banning ``banned_ids``, temperature and top-p. Prompts longer than the context are cut from
        the front. ``stop_on_eos`` overrides the configured choice of stopping at EOS.
        ``should_stop()``, asked before each decode step, ends the call with
        :class:`~latent_thoughts.engines.sampling.Cancelled` when it answers True (a server's client
        went away).
        """
        self._check_sampling(n, temperature, top_p, max_new_tokens)
        stop_ids = {int(s) for s in stop if not isinstance(s, str)}
        stop_strings = [s for s in stop if isinstance(s, str) and s]
        if self.config.stop_on_eos if stop_on_eos is None else stop_on_eos:
            stop_ids |= self.eos_ids
        if stop_strings:
            self._require_tokenizer("a stop string")
        banned = tuple(self.encode(list(banned_ids), where="banned_ids")) if banned_ids else ()
        encoded = [
            self._truncate_prompt(self.encode(p, where=f"prompt {i}"), max_new_tokens, i)
            for i, p in enumerate(prompts)
        ]
        for i, ids in enumerate(encoded):
            if not ids:
                if self.bos_id is None:
                    raise LatentThoughtsError(
                        f"prompt {i} is empty and the model has no BOS token to start from"
                    )
                encoded[i] = [self.bos_id]
        base_seed = seed if seed is not None else self.config.seed
        if base_seed is None:
            base_seed = secrets.randbits(63)
        settings = SamplingSettings(
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=base_seed,
            stop_ids=frozenset(stop_ids),
            banned_ids=banned,
            pad_multiple=self.config.pad_multiple,
        )
        max_stop_chars = max((len(s) for s in stop_strings), default=0)

        def stop_check(tokens: list[int]) -> bool:
            return self._tail_has_stop(tokens, stop_strings, max_stop_chars)

        results: list[list[Sample | None]] = [[None] * n for _ in prompts]
        with self._lock, torch.inference_mode():
            lengths = [len(ids) for ids in encoded]
            for batch in plan_batches(
                lengths, n, max_new_tokens, self.config.batch_tokens, self.config.pad_multiple
            ):
                rows = sample_batch(
                    self._forward,
                    self._new_cache,
                    encoded,
                    batch,
                    settings,
                    self.pad_id,
                    self.torch_device,
                    stop_check if stop_strings else None,
                    should_stop,
                )
                for row in rows:
                    results[row.prompt][row.sample] = self._finish_sample(row, stop_strings)
            self.usage.requests += len(prompts)
            self.usage.prompt_tokens += sum(len(ids) for ids in encoded)
            self.usage.completion_tokens += sum(len(s.token_ids) for r in results for s in r if s is not None)
        return [[s for s in r if s is not None] for r in results]

    @staticmethod
    def _check_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int) -> None:
        if n < 1:
            raise LatentThoughtsError(f"n must be at least 1, got {n}")
        if not math.isfinite(temperature) or not math.isfinite(top_p):
            raise LatentThoughtsError(f"temperature and top_p must be finite, got {temperature} and {top_p}")
        if temperature < 0:
            raise LatentThoughtsError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise LatentThoughtsError(f"top_p must be in (0, 1], got {top_p}")
        if max_new_tokens < 0:
            raise LatentThoughtsError(f"max_new_tokens must be >= 0, got {max_new_tokens}")

    def _new_cache(self, capacity: int) -> Any:
        """An empty KV cache for this model, preallocated for ``capacity`` positions."""
        return new_cache(self.model.config, capacity)

    def _tail_has_stop(self, tokens: list[int], stop_strings: list[str], max_chars: int) -> bool:
        """Whether the text of the last few tokens contains a stop string (cheap per-step check)."""
        # Each token decodes to at least one character except byte fragments, so a window of
        # max_chars + 4 tokens covers any stop string that the newest token can have completed.
        tail = self.decode(tokens[-(max_chars + 4) :])
        return any(s in tail for s in stop_strings)

    def _finish_sample(self, row: Row, stop_strings: list[str]) -> Sample:
        """Turn a finished row into a Sample: text without the stop token or stop string."""
        ids = row.tokens
        text = self.decode(ids[:-1] if row.stopped_on_token else ids)
        if stop_strings:
            cut = min((text.find(s) for s in stop_strings if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        finish: Any = row.finish or "length"
        return Sample(token_ids=list(ids), text=text, token_logprobs=list(row.logprobs), finish_reason=finish)

    # ------------------------------------------------------------------ scoring
    def score(self, contexts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[Score]:
        """Log-probability of each continuation token given its context (pairs matched by position).

        Text contexts get BOS (when configured); text continuations do not. A context longer than
        the room left by its continuation is cut from the front; a continuation that alone does not
        fit the context window is an error (its scores would be wrong).
        """
        if len(contexts) != len(continuations):
            raise LatentThoughtsError(
                f"score: {len(contexts)} contexts but {len(continuations)} continuations (they pair by position)"
            )
        pairs: list[tuple[list[int], list[int]]] = []
        for i, (context, continuation) in enumerate(zip(contexts, continuations, strict=True)):
            cont = self.encode(continuation, bos=False, where=f"continuation {i}")
            pairs.append(
                (self._scoring_context(context, len(cont), f"context {i}", f"continuation {i}"), cont)
            )
        scores: list[Score | None] = [None] * len(pairs)
        with self._lock, torch.inference_mode():
            for batch in self._scoring_batches(pairs):
                for index, logprobs in zip(batch, self._score_batch([pairs[i] for i in batch]), strict=True):
                    scores[index] = Score(token_logprobs=logprobs)
            self.usage.requests += len(pairs)
            self.usage.prompt_tokens += sum(len(c) + len(x) for c, x in pairs)
        return [s if s is not None else Score(token_logprobs=[]) for s in scores]

    def _scoring_context(self, context: Prompt, longest: int, where: str, continuation: str) -> list[int]:
        """The ids of a scoring context, cut from the front to leave room for ``longest`` continuation
        tokens; ``where`` and ``continuation`` name the two in error messages."""
        ctx = self.encode(context, where=where)
        if not ctx:
            if self.bos_id is None:
                raise LatentThoughtsError(f"{where} is empty and the model has no BOS token to condition on")
            ctx = [self.bos_id]
        room = self.max_context_tokens - longest
        if room < 1:
            raise LatentThoughtsError(
                f"{continuation} has {longest} tokens, more than max_context_tokens={self.max_context_tokens} - 1"
            )
        return ctx[-room:]

    def score_many(
        self, context: Prompt, continuations: Sequence[Prompt], *, temperature: float = 1.0
    ) -> list[Score]:
        """Log-probability of each continuation token after ONE shared context (the K thoughts of a
        chunk): :meth:`score_groups` of one group. Equal to :meth:`score` of the pairs up to float
        rounding (at ``temperature`` 1)."""
        return self.score_groups([(context, continuations)], temperature=temperature)[0]

    def score_groups(
        self,
        groups: Sequence[tuple[Prompt, Sequence[Prompt]]],
        *,
        temperature: float | Sequence[float] = 1.0,
    ) -> list[list[Score]]:
        """:meth:`score_many` of several (context, continuations) groups in as few forward passes as
        the memory bound allows: ``result[g][i]`` scores continuation i of group g.

        Groups of similar length are batched together (longest first). In a batch, the distinct
        contexts are left-padded and prefilled together, ONCE each; each context's KV cache is copied
        to the rows of its continuations, which then go through together, right-padded. A batch holds
        at most ``batch_tokens`` cached positions (rows x (longest context + longest continuation));
        a group too large for one batch is split, each part prefilling its context again.

        ``temperature`` (one for all groups, or one per group, each finite and > 0) scores under
        log_softmax(logits / T), the law :meth:`sample` draws from at temperature T and top-p 1, in
        float32 as :func:`~latent_thoughts.engines.sampling.draw` computes it.
        """
        temperatures = self._score_temperatures(temperature, len(groups))
        encoded: list[tuple[list[int], list[list[int]]]] = []
        for g, (context, continuations) in enumerate(groups):
            group = f"group {g} " if len(groups) > 1 else ""  # error messages name the culprit
            conts = [
                self.encode(c, bos=False, where=f"{group}continuation {i}")
                for i, c in enumerate(continuations)
            ]
            longest = max((len(c) for c in conts), default=0)
            ctx = self._scoring_context(
                context, longest, f"{group}context", f"the {group}longest continuation"
            )
            encoded.append((ctx, conts))
        scores = [[Score(token_logprobs=[]) for _ in conts] for _, conts in encoded]
        with self._lock, torch.inference_mode():
            for batch in plan_score_batches(
                [(len(ctx), [len(c) for c in conts]) for ctx, conts in encoded], self.config.batch_tokens
            ):
                jobs = [(encoded[g][0], [encoded[g][1][i] for i in members]) for g, members in batch]
                tempered = [temperatures[g] for g, _ in batch] if temperatures else None
                for (g, members), logprobs in zip(batch, self._score_shared(jobs, tempered), strict=True):
                    for i, values in zip(members, logprobs, strict=True):
                        scores[g][i] = Score(token_logprobs=values)
            self.usage.requests += len(encoded)
            self.usage.prompt_tokens += sum(len(ctx) + sum(len(c) for c in conts) for ctx, conts in encoded)
        return scores

    @staticmethod
    def _score_temperatures(temperature: float | Sequence[float], groups: int) -> list[float] | None:
        """One checked temperature per scoring group, or None when all are 1 (the untempered path)."""
        values = (
            [float(temperature)] * groups
            if isinstance(temperature, (int, float))
            else [float(t) for t in temperature]
        )
        if len(values) != groups:
            raise LatentThoughtsError(f"score_groups: {len(values)} temperatures for {groups} groups")
        for value in values:
            if not math.isfinite(value) or value <= 0:
                raise LatentThoughtsError(f"scoring temperature must be finite and > 0, got {value}")
        return values if any(value != 1.0 for value in values) else None

    def _score_shared(
        self,
        jobs: Sequence[tuple[list[int], list[list[int]]]],
        temperatures: Sequence[float] | None = None,
    ) -> list[list[list[float]]]:
        """Per-token log-probs of each job's continuations (all non-empty) after its context: the
        contexts prefilled once, left-padded; the continuations right-padded behind them. With
        ``temperatures`` (one per job), job j's logits are divided by its T before normalising."""
        contexts = [ctx for ctx, _ in jobs]
        conts = [cont for _, group in jobs for cont in group]
        ids, mask, positions = left_pad(contexts, self.pad_id, self.torch_device)
        width = max(len(c) for c in conts)
        cache = self._new_cache(ids.shape[1] + width)
        # log-probs of each continuation's first token: from its context's last position
        head_logits = self._forward(ids, mask, positions, cache, 1)[:, -1].float()
        counts = torch.tensor([len(group) for _, group in jobs], device=self.torch_device)
        expand = torch.repeat_interleave(torch.arange(len(jobs), device=self.torch_device), counts)
        scale = None
        if temperatures is not None:
            scale = torch.tensor(temperatures, dtype=torch.float32, device=self.torch_device)
            head_logits = head_logits / scale[:, None]
        first = torch.log_softmax(head_logits, -1)
        cache.batch_select_indices(expand)
        rows = len(conts)
        cont_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        cont_mask = torch.zeros((rows, width), dtype=torch.long)
        for row, cont in enumerate(conts):
            cont_ids[row, : len(cont)] = torch.tensor(cont, dtype=torch.long)
            cont_mask[row, : len(cont)] = 1  # right padding: never attended to by real tokens
        cont_ids, cont_mask = cont_ids.to(self.torch_device), cont_mask.to(self.torch_device)
        starts = positions[:, -1][expand] + 1
        logits = self._forward(
            cont_ids,
            torch.cat([mask[expand], cont_mask], dim=1),
            starts[:, None] + torch.arange(width, device=self.torch_device),
            cache,
            0,
        )
        # log p(token t+1) = logit of the token - logsumexp of its row: no full log-softmax tensor
        later = logits[:, :-1].float()
        if scale is not None:
            later = later / scale[expand][:, None, None]
        targets = cont_ids[:, 1:, None]
        values = (later.gather(2, targets).squeeze(2) - torch.logsumexp(later, dim=-1)).tolist()
        heads = first[expand].gather(1, cont_ids[:, :1]).squeeze(1).tolist()
        out: list[list[list[float]]] = []
        row = 0
        for _, group in jobs:
            out.append([[heads[row + i], *values[row + i][: len(cont) - 1]] for i, cont in enumerate(group)])
            row += len(group)
        return out

    def _scoring_batches(self, pairs: Sequence[tuple[list[int], list[int]]]) -> Iterator[list[int]]:
        """Indices of pairs in batches of at most ``batch_tokens`` padded tokens, longest first."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        batch: list[int] = []
        width = 0
        for index in order:
            length = len(pairs[index][0]) + len(pairs[index][1])
            if not pairs[index][1]:
                continue  # nothing to score: the empty Score is filled in by the caller
            if batch and (len(batch) + 1) * max(width, length) > self.config.batch_tokens:
                yield batch
                batch, width = [], 0
            batch.append(index)
            width = max(width, length)
        if batch:
            yield batch

    def _score_batch(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Per-token log-probs of each continuation; with left padding every continuation ends the row."""
        input_ids, mask, positions = left_pad(
            [ctx + cont for ctx, cont in pairs], self.pad_id, self.torch_device
        )
        longest = max(len(cont) for _, cont in pairs)
        # Only the positions that predict continuation tokens need logits: the last longest + 1.
        logits = self._forward(input_ids, mask, positions, None, keep=longest + 1)[:, :-1]
        out: list[list[float]] = []
        for row, (_, cont) in enumerate(pairs):
            row_logits = logits[row, logits.shape[1] - len(cont) :].float()
            targets = torch.tensor(cont, device=row_logits.device)[:, None]
            out.append(torch.log_softmax(row_logits, dim=-1).gather(1, targets).squeeze(1).tolist())
        return out

    # ------------------------------------------------------------------ chat
    def chat_prompt(self, conversation: Sequence[ChatMessage]) -> tuple[list[int], list[str]]:
        """Token ids of a conversation ready for the assistant's turn, and the stop strings it needs.

        Uses the tokenizer's chat template when it has one, else a plain ``role: content`` layout.
        """
        tokenizer = self._require_tokenizer("chat")
        for i, message in enumerate(conversation):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise LatentThoughtsError(
                    f"chat message {i} must have 'role' and 'content', got {message!r:.80}"
                )
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                list(conversation), add_generation_prompt=True, tokenize=False
            )
            return self.encode(str(text), where="chat prompt"), []
        text = "".join(f"{m['role']}: {m['content']}\n" for m in conversation) + "assistant:"
        return self.encode(text, where="chat prompt"), list(PLAIN_CHAT_STOPS)

    def chat(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        n: int = 1,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        seed: int | None = None,
        stop: Sequence[str | int] = (),
        banned_ids: Sequence[int] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[ChatReply]]:
        """Answer each conversation ``n`` times; returns one list of ``n`` replies per conversation."""
        prompts: list[list[int]] = []
        stops: set[str] = set()
        for conversation in conversations:
            ids, extra = self.chat_prompt(conversation)
            prompts.append(ids)
            stops.update(extra)
        samples = self.sample(
            prompts,
            n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            stop=[*stop, *sorted(stops)],
            seed=seed,
            banned_ids=banned_ids,
            should_stop=should_stop,
        )
        replies: list[list[ChatReply]] = []
        for ids, group in zip(prompts, samples, strict=True):
            prompt_tokens = len(self._truncate_prompt(ids, max_new_tokens, 0))
            replies.append(
                [
                    ChatReply(
                        text=s.text.strip() if stops else s.text,
                        finish_reason=s.finish_reason,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=len(s.token_ids),
                    )
                    for s in group
                ]
            )
        return replies
