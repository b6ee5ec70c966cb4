"""``latent-thoughts estep --model MODEL --chunks RUN/chunks.parquet --k 4 --out RUN/iter_t/samples.parquet``.

The E-step of METHOD section 5 over a chunk file (:mod:`latent_thoughts.em.stage`): K thoughts per
chunk from the model in the posterior role, log q, log p and log w from one scoring path, the bound
and ESS per chunk, one thought selected by a policy. Cached and resumable; ``--shard i/N`` plus
``latent-thoughts merge`` spreads it over jobs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latent_thoughts.cli.executors import add_executor_options


def register(subparsers: Any) -> None:
    """Add the ``estep`` verb."""
    parser = subparsers.add_parser(
        "estep",
        help="the model writes K thoughts per chunk; importance weights choose one (METHOD section 5)",
        description=(
            "Sample K thoughts per chunk from MODEL in the posterior role (temperature 1, stop at EOL), score "
            "them in both roles (log q, log p, log w), and select one per chunk. The output holds every sample "
            "with its scores, per-chunk ESS and bound, and a `thought` column the trainer reads like teacher "
            "thoughts. Resumable (a rerun samples only what is missing); --shard i/N + `latent-thoughts merge`."
        ),
    )
    parser.add_argument(
        "--model", required=True, type=Path, help="model folder (with --base-url: its tokenizer only)"
    )
    parser.add_argument("--chunks", required=True, type=Path, help="chunk file from `latent-thoughts chunk`")
    parser.add_argument("--out", required=True, type=Path, help="output, e.g. RUN/iter_1/samples.parquet")
    parser.add_argument("--k", type=int, help="thoughts per chunk (default 4)")
    parser.add_argument("--max-thought-tokens", type=int, help="longest thought, EOL included (default 1024)")
    parser.add_argument(
        "--context-tokens", type=int, help="longest E-step sequence (default: the model's positions)"
    )
    parser.add_argument(
        "--policy", help="selection: importance (default), highest, uniform, checker (testbed, STaR-style)"
    )
    parser.add_argument("--seed", type=int, help="seed of sampling and selection (default 0)")
    parser.add_argument(
        "--batch-chunks", type=int, help="chunks per engine call and cache write (default 32)"
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
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="compute dtype")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_options(parser)
    parser.set_defaults(handler=run)


def options(args: argparse.Namespace) -> list[str]:
    """The E-step options of the command line as ``key=value`` overrides (flags win over --set)."""
    flags = {
        "k": args.k,
        "max_thought_tokens": args.max_thought_tokens,
        "context_tokens": args.context_tokens,
        "policy": args.policy,
        "seed": args.seed,
        "batch_chunks": args.batch_chunks,
    }
    return [*args.set, *(f"{key}={value}" for key, value in flags.items() if value is not None)]


def run(args: argparse.Namespace) -> int:
    """Run or resume the E-step and print its summary."""
    from latent_thoughts.cli.executors import check_executor, launch_lines, ray_options, slurm_options
    from latent_thoughts.config import load_config
    from latent_thoughts.em.stage import EStepConfig, EStepRequest, run_estep
    from latent_thoughts.errors import LatentThoughtsError
    from latent_thoughts.generation.shards import parse_shard

    if not args.model.is_dir():
        raise LatentThoughtsError(f"--model {args.model}: not a model folder")
    config = load_config(EStepConfig, args.config, options(args))
    request = EStepRequest(
        model=args.model,
        chunks=args.chunks,
        out=args.out,
        config=config,
        base_url=args.base_url,
        shard=parse_shard(args.shard) if args.shard else None,
        device=args.device,
        dtype=args.dtype,
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
    argv = ["estep", "--model", model, "--chunks", chunks, "--out", out]
    argv += ["--device", args.device, "--dtype", args.dtype, "--no-progress"]
    if args.base_url:
        argv += ["--base-url", args.base_url]
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
    return [
        *ran,
        f"{summary['chunks']:,} chunks x K={summary['k']}: {summary['sampled_now']:,} sampled now, "
        f"{summary['from_cache']:,} from the cache; {summary['elapsed_s']:.1f} s",
        f"mean bound log mean w {summary['mean_bound']:.3f} nats, mean ESS {summary['mean_ess']:.2f} of "
        f"{summary['k']}, thoughts closed by EOL {100 * summary['closed_by_eol']:.1f}%",
        f"policy {summary['policy']}: {summary['selected']:,} thoughts selected, mean "
        f"{summary['mean_thought_tokens']:.1f} tokens -> {summary['result']}",
    ]


__all__ = ["register", "summary_lines"]
