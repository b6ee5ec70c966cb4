"""``latent-thoughts em --plan``: what a run will do and cost, before anything runs (nothing is written).

For every stage: what it reads, its token budget, the E-step's samples and thought tokens, the
teacher's projected tokens and cost (as ``synthesize --dry-run`` projects them), and the compute in
FLOPs with the hours it takes on a few devices, at the throughput ``bench/`` measured:

- ``cpu``: this project's 2-core CPU, training at about 10 k tokens/s on the testbed's 0.83 M-parameter
  model (``bench/train.py``), i.e. about 5e10 model FLOP/s;
- ``h200``: one H200 training at 17.5% of its 789 TFLOP/s bf16 peak (``bench/gpu.py``, docs/performance.md);
- ``h100``: one H100 SXM at the same share of its 989 TFLOP/s dense bf16 peak (not measured here).

Hours assume the training rate for every stage. Sampling ran far below it on the H200 (a fixed cost
per decoding step, docs/performance.md), so the E-step's hours are a lower bound.
"""

from __future__ import annotations

from typing import Any

from latent_thoughts.em.config import EMConfig
from latent_thoughts.train.budget import estep_flops, forward_flops_per_token, training_flops_per_token

DEVICE_FLOPS = {
    "cpu": 6 * 830_000 * 10_000,
    "h200": 0.175 * 789e12,
    "h100": 0.175 * 989e12,
}
"""Model FLOP/s of one device at the measured training share (see the module docstring)."""


SPLIT_WORDS = (("documents", "documents"), ("chunks", "chunks"), ("text_tokens", "tokens"))


def compute_hours(flops: float, devices: dict[str, float]) -> str:
    """``flops`` as the time it takes on each of ``devices`` (name: model FLOP/s)."""
    return ", ".join(f"{name} {duration(flops / rate)}" for name, rate in devices.items())


def parse_devices(specs: list[str]) -> dict[str, float]:
    """``NAME=RATE`` specs (RATE in model FLOP/s, e.g. ``a100=5.5e13``; a known name alone takes its
    measured rate) as a device table; none given: :data:`DEVICE_FLOPS`."""
    from latent_thoughts.errors import LatentThoughtsError

    devices: dict[str, float] = {}
    for spec in specs:
        name, _, rate = spec.partition("=")
        if not rate and name in DEVICE_FLOPS:
            devices[name] = DEVICE_FLOPS[name]
            continue
        try:
            value = float(rate)
        except ValueError:
            value = float("nan")
        if not name or not value > 0 or value == float("inf"):
            known = ", ".join(DEVICE_FLOPS)
            raise LatentThoughtsError(
                f"--plan-device {spec!r}: give NAME=FLOP/s (model FLOP/s, e.g. a100=5.5e13) or one of {known}"
            )
        devices[name] = value
    return devices or dict(DEVICE_FLOPS)


def passes(tokens: int, data_tokens: int | None) -> str:
    """`` (about N passes over its data)`` where the data's size (thoughts included) is known."""
    return f" (about {tokens / data_tokens:,.3g} passes over its data)" if data_tokens else ""


def duration(seconds: float) -> str:
    """A duration in the unit that reads best: seconds, minutes, hours or days."""
    if seconds < 60:
        return f"{seconds:.2g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:,.3g} days"


def count(value: Any) -> str:
    """A number with thousands separators (or ``?`` when unknown)."""
    if value is None:
        return "?"
    return f"{value:,.0f}" if isinstance(value, float) else f"{value:,}"


def plan_lines(config: EMConfig, devices: dict[str, float] | None = None) -> list[str]:
    """The plan of ``config``'s run as printable lines, its times on ``devices`` (name: model FLOP/s;
    default :data:`DEVICE_FLOPS`)."""
    devices = devices or dict(DEVICE_FLOPS)
    from latent_thoughts.em.experiment import get_experiment

    sizes = get_experiment(config.experiment).plan_sizes(config)
    model = sizes["model"]
    params, layers, hidden, seq_len = model["parameters"], model["layers"], model["hidden"], model["seq_len"]
    train_per_token = training_flops_per_token(params, layers, hidden, seq_len)
    forward_per_token = forward_flops_per_token(params, layers, hidden, seq_len)
    splits = sizes["splits"]
    counter = sizes["token_counter"]
    lines = [
        f"plan of {config.out} (experiment {config.experiment}); nothing is written",
        f"  corpus: {sizes['corpus']}",
        f"  model: {sizes['model_name']}: {count(params)} parameters, {layers} layers, width {hidden}, "
        f"windows of {seq_len} tokens",
        f"  teacher: {sizes['teacher']}",
        f"  tokens counted with {counter}",
        "",
        "| stage | what | size | compute |",
        "| --- | --- | --- | --- |",
    ]
    totals = {"train": 0.0, "estep": 0.0, "teacher": 0.0}

    def row(stage: str, what: str, size: str, flops: float | None = None) -> None:
        compute = f"{flops:.3g} FLOPs ({compute_hours(flops, devices)})" if flops else "-"
        lines.append(f"| {stage} | {what} | {size} | {compute} |")

    split_sizes = "; ".join(
        f"{name}: " + ", ".join(f"{count(split[key])} {word}" for key, word in SPLIT_WORDS if key in split)
        for name, split in splits.items()
    )
    row("data", sizes["split_rule"], split_sizes)
    for name, what, size in sizes.get("extra_stages", []):
        row(name, what, size)
    teacher_flops = sizes.get("teacher_flops")
    totals["teacher"] = teacher_flops or 0.0
    row("teacher", "warm-start thoughts", sizes.get("teacher_size", "-"), teacher_flops)
    warm = sizes["warm_start_tokens"]
    totals["train"] += train_per_token * warm
    row(
        "warm_start",
        "train on the warm-start split with teacher thoughts",
        f"{count(warm)} tokens{passes(warm, sizes.get('warm_start_data_tokens'))}",
        train_per_token * warm,
    )
    evaluation = sizes["evaluation"]
    row("eval_t", "every model", evaluation)

    bootstrap = splits["bootstrap"]
    k, thought = config.estep.k, config.estep.max_thought_tokens
    samples = (bootstrap.get("chunks") or 0) * k
    prompt_tokens = bootstrap.get("prompt_tokens") or 0
    sampled = prompt_tokens + samples * thought  # one shared prefill per chunk, then K thoughts
    scored = 2 * (k * prompt_tokens + samples * thought)  # log p and log q of every sample
    one_estep = estep_flops(params, sampled, scored, layers, hidden, seq_len)
    mstep = sizes["mstep_tokens"]
    esteps = config.iterations + config.final_estep
    for t in range(1, esteps + 1):
        totals["estep"] += one_estep
        row(
            f"estep_{t}",
            f"K = {k} thoughts per bootstrap chunk, policy {config.estep.policy}",
            f"{count(samples)} samples, at most {count(samples * thought)} thought tokens "
            f"({thought} each), {count(prompt_tokens)} prompt tokens",
            one_estep,
        )
        if t <= config.iterations:
            totals["train"] += train_per_token * mstep
            row(
                f"mstep_{t}",
                f"train from {config.mstep.init} on the bootstrap split",
                f"{count(mstep)} tokens{passes(mstep, sizes.get('bootstrap_data_tokens'))}",
                train_per_token * mstep,
            )
    total = sum(totals.values())
    lines += [
        "",
        f"training: {count(warm + mstep * config.iterations)} tokens, {totals['train']:.3g} FLOPs; "
        f"E-steps: {esteps} x {count(samples)} samples, {totals['estep']:.3g} FLOPs "
        f"(forward {forward_per_token:.3g} FLOPs per token)",
        f"total compute: {total:.3g} FLOPs ({compute_hours(total, devices)}; E-step hours are a lower bound)",
    ]
    lines += [f"  {line}" for line in sizes.get("teacher_lines", [])]
    return lines


# --- sizes the experiments report --------------------------------------------------------------------


def split_sizes(chunks: list[Any], count_tokens: Any) -> dict[str, Any]:
    """Documents, chunks, text tokens and E-step prompt tokens (prefix and chunk) of a split's chunks."""
    text = sum(count_tokens(chunk.text) for chunk in chunks)
    prefixes = sum(count_tokens(chunk.prefix) for chunk in chunks if chunk.prefix)
    return {
        "documents": len({chunk.doc_id for chunk in chunks}),
        "chunks": len(chunks),
        "text_tokens": text,
        "prompt_tokens": text + prefixes,
    }


def scratch_shape(spec: Any, vocabulary: int) -> dict[str, Any]:
    """Parameters, layers and width of a scratch Llama of ``spec`` (``ScratchModelConfig``)."""
    width, layers = spec.hidden_size, spec.num_layers
    kv_width = width * spec.num_kv_heads // spec.num_heads
    per_layer = 2 * width * width + 2 * width * kv_width + 3 * width * spec.intermediate_size + 2 * width
    embeddings = vocabulary * width * (1 if spec.tie_word_embeddings else 2)
    return {"parameters": embeddings + layers * per_layer + width, "layers": layers, "hidden": width}


def pretrained_shape(path: str) -> dict[str, Any] | None:
    """Parameters, layers and width of the Hugging Face model at ``path`` (built on the meta device,
    so no weights are read), or None when its configuration cannot be read here."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    distinct = {id(p): p for p in model.parameters()}
    return {
        "parameters": sum(p.numel() for p in distinct.values()),
        "layers": int(config.num_hidden_layers),
        "hidden": int(config.hidden_size),
    }


def token_counter(tokenizer_path: str | None) -> tuple[Any, str]:
    """A function counting a text's tokens with the tokenizer at ``tokenizer_path``, and its name; about
    4 characters a token where there is no tokenizer to load."""
    if tokenizer_path is not None:
        from latent_thoughts.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(tokenizer_path)
        except Exception:  # a hub id offline, a missing folder: the estimate below
            tokenizer = None
        if tokenizer is not None:
            return (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])), str(
                tokenizer_path
            )
    return (lambda text: max(1, round(len(text) / 4))), "an estimate of 4 characters a token"
