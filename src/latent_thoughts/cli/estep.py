"""``latent-thoughts estep MODEL --chunks RUN/chunks.parquet --k 4 --out RUN/iter_t/samples.parquet``.

The E-step of METHOD section 5 over a chunk file (:mod:`latent_thoughts.em.stage`): K thoughts per
chunk from the model in the posterior role, log q, log p and log w from one scoring path, the bound
and ESS per chunk, one thought selected by a policy. Cached and resumable; ``--shard i/N`` plus
``latent-thoughts merge`` spreads it over jobs. The E-step's options (``--k``,
``--max-thought-tokens``, ...) are the fields of :class:`~latent_thoughts.em.stage.EStepConfig`, their
flags made from the fields (:func:`~latent_thoughts.cli.flags.add_config_fields`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from latent_thoughts.cli.executors import add_executor_options
from latent_thoughts.cli.flags import (
    MODEL_METAVAR,
    add_config_fields,
    add_progress_option,
    config_overrides,
    deprecated_alias,
)
from latent_thoughts.cli.numbers import non_negative_float, non_negative_int, positive_float, positive_int
from latent_thoughts.em.stage import EStepConfig
from latent_thoughts.outputs import RunPaths

ESTEP_FIELDS = tuple(EStepConfig.model_fields)
"""The fields of :class:`~latent_thoughts.em.stage.EStepConfig`, each an ``estep`` flag (``k``,
``max_thought_tokens``, ``temperature``, ``context_tokens``, ``policy``, ``seed``, ``batch_chunks``,
``batch_tokens``): a field added there is a flag here."""


def register(subparsers: Any) -> None:
    """Add the ``estep`` verb."""
    parser = subparsers.add_parser(
        "estep",
        help="the model writes K thoughts per chunk; importance weights choose one (METHOD section 5)",
        description=(
            "Sample K thoughts per chunk from MODEL in the posterior role (temperature 1 unless --temperature, "
            "stop at EOL), score them in both roles (log q, log p, log w), and select one per chunk. The "
            "output holds every sample "
            "with its scores, per-chunk ESS and bound, and a `thought` column the trainer reads like teacher "
            "thoughts. Resumable (a rerun samples only what is missing); --shard i/N + `latent-thoughts merge`."
        ),
    )
    parser.add_argument(
        "model",
        metavar=MODEL_METAVAR,
        type=Path,
        help="model folder, or an engine file (*.yaml, kind http or transformers); with --base-url: the "
        "served model's tokenizer folder",
    )
    deprecated_alias(parser, "--model", canonical=MODEL_METAVAR, dest="model")
    parser.add_argument("--chunks", required=True, type=Path, help="chunk file from `latent-thoughts chunk`")
    parser.add_argument("--out", required=True, type=Path, help="output, e.g. RUN/iter_1/samples.parquet")
    add_config_fields(parser, EStepConfig, ESTEP_FIELDS, types={"seed": non_negative_int})
    parser.add_argument("--config", type=Path, help="YAML file of E-step options (keys as in --set)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="E-step options, e.g. max_thought_tokens=64"
    )
    parser.add_argument(
        "--shard", help="i/N: this job's share of the documents; join with `latent-thoughts merge`"
    )
    parser.add_argument(
        "--base-url",
        help="sample from the model served at this OpenAI-compatible root (`latent-thoughts serve`, vLLM) instead",
    )
    parser.add_argument(
        "--device", help="local model: auto (a GPU when there is one; the default), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--dtype", choices=["auto", "bf16", "fp32"], help="local model: compute dtype (default auto)"
    )
    served = parser.add_argument_group("a served model (--base-url, or an engine file of kind http)")
    served.add_argument(
        "--timeout-s",
        type=positive_float,
        help="seconds a request may take before it is retried (default 120)",
    )
    served.add_argument(
        "--max-attempts",
        type=positive_int,
        help="tries per request before the run stops, work kept (default 6)",
    )
    served.add_argument(
        "--backoff-initial-s",
        type=non_negative_float,
        help="first retry delay, doubled at each retry (default 1; a Retry-After is honoured)",
    )
    served.add_argument("--concurrency", type=positive_int, help="requests in flight at once (default 8)")
    add_progress_option(parser)
    add_executor_options(parser)
    parser.set_defaults(handler=run, run_paths=run_paths)


def run_paths(args: argparse.Namespace) -> RunPaths:
    """The model, chunk file and options file read; the samples, summary and cache written."""
    from latent_thoughts.generation.outputs import output_paths
    from latent_thoughts.generation.shards import parse_shard

    paths = output_paths(args.out, parse_shard(args.shard) if args.shard else None)
    return RunPaths(
        inputs=[args.chunks, args.model, args.config],
        models=[args.model],
        files=[paths.result, paths.summary],
        folders=[paths.cache_dir],
    )


def options(args: argparse.Namespace) -> list[str]:
    """The E-step options of the command line as ``key=value`` overrides (flags win over --set)."""
    return [*args.set, *config_overrides(args, ESTEP_FIELDS)]


def engine_of(args: argparse.Namespace) -> tuple[Path, str | list[str] | None, dict[str, Any]]:
    """``(model folder, base URL or None, engine options)`` of MODEL and the engine flags.

    The folder gives the tokenizer and the context length (of a served model: its tokenizer folder);
    the options are the HTTP engine's (retry policy included) or the transformers engine's. A flag
    that does not apply to the engine is a one-line error."""
    from latent_thoughts.engines.http_engine import HTTPEngineConfig
    from latent_thoughts.engines.spec import command_line_spec, engine_options, is_engine_file
    from latent_thoughts.errors import LatentThoughtsError

    local = {"device": args.device, "dtype": args.dtype}
    flags = {
        "timeout_s": args.timeout_s,
        "max_attempts": args.max_attempts,
        "backoff_initial_s": args.backoff_initial_s,
        "concurrency": args.concurrency,
    }
    http = {key: value for key, value in flags.items() if value is not None}
    if not args.base_url and not is_engine_file(args.model) and not args.model.is_dir():
        raise LatentThoughtsError(f"MODEL {args.model}: not a model folder (or engine file, *.yaml)")
    spec = command_line_spec(args.model, args.base_url, local)
    if spec.kind == "http":
        config = engine_options("http", {**spec.http, **http}, str(args.model))
        assert isinstance(config, HTTPEngineConfig)
        folder = Path(str(spec.tokenizer))
        if not folder.is_dir():
            raise LatentThoughtsError(f"{folder}: not a tokenizer folder (the served model's tokenizer)")
        return folder, config.base_url, {**spec.http, **http}
    if http:
        names = ", ".join(f"--{key.replace('_', '-')}" for key in http)
        raise LatentThoughtsError(
            f"{names}: for a served model only (--base-url, or an engine file of kind http)"
        )
    options = dict(spec.transformers)
    folder = Path(str(options.pop("model", "")))
    if not folder.is_dir():
        raise LatentThoughtsError(f"{args.model}: transformers.model {str(folder)!r} is not a model folder")
    return folder, None, options


def run(args: argparse.Namespace) -> int:
    """Run or resume the E-step and print its summary."""
    from latent_thoughts.cli.executors import execute
    from latent_thoughts.config import load_config
    from latent_thoughts.em.stage import EStepRequest, EStepStage
    from latent_thoughts.generation.shards import parse_shard

    model, base_url, engine_options = engine_of(args)
    config = load_config(EStepConfig, args.config, options(args))
    if base_url and not getattr(args, "verbose", False):
        # One log line per HTTP request drowns the progress bar; -v brings them back.
        for name in ("httpx", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)
    request = EStepRequest(
        model=model,
        chunks=args.chunks,
        out=args.out,
        config=config,
        base_url=base_url,
        engine_options=engine_options,
        shard=parse_shard(args.shard) if args.shard else None,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    summary = execute(args, EStepStage(request), request.progress)
    if summary is None:  # a Slurm array: its jobs run on their own
        return 0
    for line in summary_lines(summary):
        print(line)
    return 0


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The closing lines of an E-step run."""
    executor = summary.get("executor")
    ran = (
        [
            f"executor {executor['kind']}: {executor['workers']} workers over {executor['shards']} shards, "
            f"{executor['wall_s']:.1f} s wall"
        ]
        if executor
        else []
    )
    lines = [
        *ran,
        f"{summary['chunks']:,} chunks x K={summary['k']}: {summary['sampled_now']:,} sampled now, "
        f"{summary['from_cache']:,} from the cache; {summary['elapsed_s']:.1f} s",
        f"mean bound log mean w {summary['mean_bound']:.3f} nats, mean ESS {summary['mean_ess']:.2f} of "
        f"{summary['k']}, thoughts closed by EOL {100 * summary['closed_by_eol']:.1f}%",
        f"policy {summary['policy']}: {summary['selected']:,} thoughts selected, mean "
        f"{summary['mean_thought_tokens']:.1f} tokens -> {summary['result']}",
    ]
    if summary.get("retries"):
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(summary["failures"].items()))
        lines.append(f"requests retried: {summary['retries']:,} ({reasons})")
    return lines


__all__ = ["register", "summary_lines"]
