"""``latent-thoughts serve MODEL_DIR --port N``: an OpenAI-compatible server over a local model."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``serve`` verb."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a local model over an OpenAI-compatible HTTP API",
        description=(
            "Serve MODEL_DIR (any Hugging Face causal LM folder) with /v1/models, /v1/completions "
            "(log-probs, echo scoring, token-id prompts), /v1/chat/completions and the Files and "
            "Batches endpoints. Engine options come from --config (YAML) and --set KEY=VALUE "
            "(keys of TransformersEngineConfig: device, dtype, batch_tokens, max_context_tokens, ...)."
        ),
    )
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="model folder (config.json, weights, tokenizer)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--state-dir", help="folder for uploaded files and batches (default: a new temp folder)"
    )
    parser.add_argument("--served-model-name", help="model name in the API (default: the folder's name)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="compute dtype")
    parser.add_argument("--batch-tokens", type=int, help="memory bound of one batch, in tokens")
    parser.add_argument(
        "--max-context-tokens", type=int, help="longest sequence (prompts are cut from the front)"
    )
    parser.add_argument("--config", help="YAML file of engine options")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="engine option overrides")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the model and serve it until interrupted."""
    from pathlib import Path

    from latent_thoughts.config import deep_merge, parse_overrides, read_yaml
    from latent_thoughts.errors import LatentThoughtsError
    from latent_thoughts.server import serve

    if not (Path(args.model_dir) / "config.json").exists():
        raise LatentThoughtsError(f"{args.model_dir}: not a model folder (no config.json)")
    options: dict[str, Any] = read_yaml(args.config) if args.config else {}
    options = deep_merge(options, parse_overrides(args.set))
    for flag in ("device", "dtype", "batch_tokens", "max_context_tokens"):
        value = getattr(args, flag)
        if value is not None:
            options[flag] = value
    serve(
        args.model_dir,
        host=args.host,
        port=args.port,
        state_dir=args.state_dir,
        model_name=args.served_model_name,
        engine_options=options,
    )
    return 0
