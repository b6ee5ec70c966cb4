"""``latent-thoughts serve MODEL --port N``: an OpenAI-compatible server over a local model."""

from __future__ import annotations

import argparse
from typing import Any

from latent_thoughts.cli.flags import MODEL_METAVAR, deprecated_alias
from latent_thoughts.cli.numbers import port, positive_float, positive_int
from latent_thoughts.outputs import RunPaths


def register(subparsers: Any) -> None:
    """Add the ``serve`` verb."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a local model over an OpenAI-compatible HTTP API",
        description=(
            "Serve MODEL (any Hugging Face causal LM folder) with /v1/models, /v1/completions "
            "(log-probs, echo scoring, token-id prompts), /v1/chat/completions and the Files and "
            "Batches endpoints. Engine options come from --config (YAML) and --set KEY=VALUE "
            "(keys of TransformersEngineConfig: device, dtype, batch_tokens, max_context_tokens, ...)."
        ),
    )
    parser.add_argument(
        "model_dir", metavar=MODEL_METAVAR, help="model folder (config.json, weights, tokenizer)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--state-dir", help="folder for uploaded files and batches (default: a new temp folder)"
    )
    parser.add_argument("--served-model-name", help="model name in the API (default: the folder's name)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="compute dtype")
    parser.add_argument("--batch-tokens", type=positive_int, help="memory bound of one batch, in tokens")
    parser.add_argument(
        "--context-tokens",
        dest="max_context_tokens",
        type=positive_int,
        help="longest sequence (prompts are cut from the front; the engine option max_context_tokens)",
    )
    deprecated_alias(parser, "--max-context-tokens", canonical="--context-tokens", dest="max_context_tokens")
    parser.add_argument(
        "--api-key",
        help="require Authorization: Bearer KEY on every route (default: $LATENT_THOUGHTS_API_KEY; "
        "the variable keeps the key out of the process list)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-local --host without an API key (anyone who reaches the port can use it)",
    )
    parser.add_argument(
        "--max-body-mb", type=positive_float, help="largest JSON request body in MiB (default 8)"
    )
    parser.add_argument("--max-n", type=positive_int, help="largest n of one request (default 128)")
    parser.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        help="longest prompt accepted (default: four context lengths)",
    )
    parser.add_argument("--config", help="YAML file of engine options")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="engine option overrides")
    parser.set_defaults(handler=run, run_paths=run_paths)


def run_paths(args: argparse.Namespace) -> RunPaths:
    """The model and the engine options read; the state folder (uploads, batches) written."""
    return RunPaths(
        inputs=[args.model_dir, args.config],
        models=[args.model_dir],
        folders=[args.state_dir],
        flag="--state-dir",
    )


def run(args: argparse.Namespace) -> int:
    """Load the model and serve it until interrupted."""
    import dataclasses
    import math
    from pathlib import Path

    from latent_thoughts.config import deep_merge, parse_overrides, read_yaml
    from latent_thoughts.errors import LatentThoughtsError
    from latent_thoughts.server import serve
    from latent_thoughts.server.wire import Limits

    if not (Path(args.model_dir) / "config.json").exists():
        raise LatentThoughtsError(f"{args.model_dir}: not a model folder (no config.json)")
    options: dict[str, Any] = read_yaml(args.config) if args.config else {}
    options = deep_merge(options, parse_overrides(args.set))
    for flag in ("device", "dtype", "batch_tokens", "max_context_tokens"):
        value = getattr(args, flag)
        if value is not None:
            options[flag] = value
    limits = Limits()
    if args.max_body_mb is not None:
        if not math.isfinite(args.max_body_mb) or args.max_body_mb <= 0:
            raise LatentThoughtsError(f"--max-body-mb {args.max_body_mb}: must be a positive finite number")
        limits = dataclasses.replace(limits, max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    for flag, name in (("max_n", "max_n"), ("max_prompt_tokens", "max_prompt_tokens")):
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                raise LatentThoughtsError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
            limits = dataclasses.replace(limits, **{name: value})
    serve(
        args.model_dir,
        host=args.host,
        port=args.port,
        state_dir=args.state_dir,
        model_name=args.served_model_name,
        engine_options=options,
        api_key=args.api_key,
        insecure_no_auth=args.insecure_no_auth,
        limits=limits,
    )
    return 0
