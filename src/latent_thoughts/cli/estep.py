"""``latent-thoughts estep --model MODEL --chunks RUN/chunks.parquet --k 4 --out RUN/iter_t/samples.parquet``.

The E-step of METHOD section 5 over a chunk file (:mod:`latent_thoughts.em.stage`): K thoughts per
chunk from the model in the posterior role, log q, log p and log w from one scoring path, the bound
and ESS per chunk, one thought selected by a policy. Cached and resumable; ``--shard i/N`` plus
``latent-thoughts merge`` spreads it over jobs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from latent_thoughts.cli.executors import add_executor_options
from latent_thoughts.cli.numbers import non_negative_float, non_negative_int, positive_float, positive_int
from latent_thoughts.outputs import RunPaths


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
        "--model",
        required=True,
        type=Path,
        help="model folder, or an engine file (*.yaml, kind http or transformers); with --base-url: the "
        "served model's tokenizer folder",
    )
    parser.add_argument("--chunks", required=True, type=Path, help="chunk file from `latent-thoughts chunk`")
    parser.add_argument("--out", required=True, type=Path, help="output, e.g. RUN/iter_1/samples.parquet")
    parser.add_argument("--k", type=positive_int, help="thoughts per chunk (default 4)")
    parser.add_argument(
        "--max-thought-tokens", type=positive_int, help="longest thought, EOL included (default 1024)"
    )
    parser.add_argument(
        "--temperature",
        type=positive_float,
        help="proposal temperature: thoughts drawn and log q scored at T, log p at 1 (default 1.0, the "
        "paper's; a local model only)",
    )
    parser.add_argument(
        "--context-tokens", type=positive_int, help="longest E-step sequence (default: the model's positions)"
    )
    parser.add_argument(
        "--policy", help="selection: importance (default), highest, uniform, checker (testbed, STaR-style)"
    )
    parser.add_argument("--seed", type=non_negative_int, help="seed of sampling and selection (default 0)")
    parser.add_argument(
        "--batch-chunks", type=positive_int, help="chunks per engine call and cache write (default 32)"
    )
    parser.add_argument(
        "--batch-tokens",
        type=positive_int,
        help="memory bound of one forward batch, in cached positions (default 16384)",
    )
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_options(parser)
    parser.set_defaults(handler=run, run_paths=run_paths)


def run_paths(args: argparse.Namespace) -> RunPaths:
    """The model, chunk file and options file read; the samples, summary and cache written."""
    from latent_thoughts.generation.shards import parse_shard
    from latent_thoughts.synthesis.pipeline import output_paths

    paths = output_paths(args.out, parse_shard(args.shard) if args.shard else None)
    return RunPaths(
        inputs=[args.chunks, args.model, args.config],
        models=[args.model],
        files=[paths.result, paths.summary],
        folders=[paths.cache_dir],
    )


def options(args: argparse.Namespace) -> list[str]:
    """The E-step options of the command line as ``key=value`` overrides (flags win over --set)."""
    flags = {
        "k": args.k,
        "max_thought_tokens": args.max_thought_tokens,
        "temperature": args.temperature,
        "context_tokens": args.context_tokens,
        "policy": args.policy,
        "seed": args.seed,
        "batch_chunks": args.batch_chunks,
        "batch_tokens": args.batch_tokens,
    }
    return [*args.set, *(f"{key}={value}" for key, value in flags.items() if value is not None)]


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
        raise LatentThoughtsError(f"--model {args.model}: not a model folder (or engine file, *.yaml)")
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
    from latent_thoughts.cli.executors import check_executor, launch_lines, ray_options, slurm_options
    from latent_thoughts.config import load_config
    from latent_thoughts.em.stage import EStepConfig, EStepRequest, run_estep
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
    check_executor(args)
    if args.executor == "slurm":
        from latent_thoughts.generation.slurm import launch

        for line in launch_lines(
            launch(shard_argv(args), args.out.resolve(), slurm_options(args)), args.slurm_cluster, args.out
        ):
            print(line)
        return 0
    if args.executor == "ray":
        from latent_thoughts.generation.ray_pipeline import estep_on_ray

        summary = estep_on_ray(request, ray_options(args, request.progress))
    else:
        summary = run_estep(request)
    for line in summary_lines(summary):
        print(line)
    return 0


def shard_argv(args: argparse.Namespace) -> list[str]:
    """This ``estep`` command line without its executor options: what each shard job runs."""
    # absolute paths: a job may start in another directory
    model, chunks, out = (str(Path(path).resolve()) for path in (args.model, args.chunks, args.out))
    argv = ["estep", "--model", model, "--chunks", chunks, "--out", out, "--no-progress"]
    flags = {
        "--device": args.device,
        "--dtype": args.dtype,
        "--base-url": args.base_url,
        "--timeout-s": args.timeout_s,
        "--max-attempts": args.max_attempts,
        "--backoff-initial-s": args.backoff_initial_s,
        "--concurrency": args.concurrency,
    }
    for flag, value in flags.items():
        if value is not None:
            argv += [flag, str(value)]
    if args.config:
        argv += ["--config", str(Path(args.config).resolve())]
    overrides = options(args)
    return [*argv, "--set", *overrides] if overrides else argv


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
