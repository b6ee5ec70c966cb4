"""``latent-thoughts likelihood MODEL_DIR --documents VAL.jsonl --k 1,2,4 --out RUN/eval/likelihood.json``.

Held-out language-model metrics of raw validation documents (METHOD section 7): NLL per token and
bits per byte, and the ELBO(K) for each K asked for (:mod:`latent_thoughts.evaluate.likelihood`).
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

from latent_thoughts.cli.numbers import non_negative_int, positive_int
from latent_thoughts.outputs import RunPaths

MAX_K = 1024
"""The largest K of ELBO(K): K thoughts are drawn and scored for every chunk of every document."""


def register(subparsers: Any) -> None:
    """Add the ``likelihood`` verb."""
    parser = subparsers.add_parser(
        "likelihood",
        help="held-out NLL per token, bits per byte and ELBO(K) of a model on raw documents",
        description=(
            "Score raw validation documents (JSONL / Parquet / text, as `chunk` reads them): NLL per token "
            "and bits per byte, and ELBO(K) = sum over uniform chunks of log mean_k w_k with the full prefix "
            "as context, the E-step's own sampling and scoring."
        ),
    )
    parser.add_argument("model", metavar="MODEL_DIR", help="model folder with its tokenizer")
    parser.add_argument(
        "--documents", nargs="+", required=True, help="validation documents (files or folders)"
    )
    parser.add_argument(
        "--k",
        default="1,2,4",
        help=f"comma-separated K for ELBO(K), each 1 to {MAX_K} (default 1,2,4; 0 skips it)",
    )
    parser.add_argument(
        "--words-per-chunk", type=positive_int, default=32, help="uniform chunk size in words (default 32)"
    )
    parser.add_argument(
        "--thought-tokens", type=positive_int, default=64, help="longest thought, EOL included"
    )
    parser.add_argument(
        "--context-tokens", type=positive_int, default=1024, help="E-step context budget in tokens"
    )
    parser.add_argument("--limit", type=positive_int, help="use the first N documents")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the thoughts' draws")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="compute dtype")
    parser.add_argument("--out", help="write the metrics to this JSON file")
    parser.set_defaults(handler=run, run_paths=run_paths)


def elbo_ks(text: str) -> list[int]:
    """The K of ``--k``: comma-separated integers from 1 to :data:`MAX_K`; ``0`` alone asks for none."""
    from latent_thoughts.errors import LatentThoughtsError

    if text.strip() == "0":
        return []
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise LatentThoughtsError(f"--k must be comma-separated integers, got {text!r}") from None
    for k in ks:
        if not 1 <= k <= MAX_K:
            raise LatentThoughtsError(
                f"--k {text}: each K must be from 1 to {MAX_K} (thoughts drawn per chunk), got {k}; "
                "--k 0 skips the ELBO"
            )
    if not ks:
        raise LatentThoughtsError(f"--k {text!r} names no K; --k 0 skips the ELBO")
    return ks


def run_paths(args: argparse.Namespace) -> RunPaths:
    """The model and the documents read; the metrics file written (with --out). A wrong --k fails here,
    before anything is read."""
    elbo_ks(args.k)
    return RunPaths(inputs=[args.model, *args.documents], models=[args.model], files=[args.out])


def run(args: argparse.Namespace) -> int:
    """Compute and print the metrics; optionally write them."""
    from latent_thoughts.atomic import write_text
    from latent_thoughts.config import validate_config
    from latent_thoughts.corpus import read_documents
    from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
    from latent_thoughts.errors import LatentThoughtsError
    from latent_thoughts.evaluate.likelihood import elbo, raw_nll, uniform_chunks

    if args.limit is not None and args.limit <= 0:
        raise LatentThoughtsError(f"--limit must be a positive number of documents, got {args.limit}")
    ks = elbo_ks(args.k)
    texts = [document.text for document in itertools.islice(read_documents(args.documents), args.limit)]
    if not texts:
        raise LatentThoughtsError(f"no documents in {' '.join(args.documents)}")
    options = {"model": str(args.model), "device": args.device, "dtype": args.dtype}
    engine = TransformersEngine(
        validate_config(TransformersEngineConfig, options, "likelihood engine options")
    )
    nll = raw_nll(engine, engine.tokenizer, texts)
    record: dict[str, Any] = {
        "model": str(args.model),
        "documents": len(texts),
        "tokens": nll.tokens,
        "nll_per_token": nll.nll_per_token,
        "bits_per_byte": nll.bits_per_byte,
        "nll_per_document": nll.nll / len(texts),
    }
    print(
        f"{len(texts)} documents: NLL {nll.nll_per_token:.4f} nats/token, {nll.bits_per_byte:.4f} bits/byte"
    )
    chunked = [uniform_chunks(text, args.words_per_chunk) for text in texts]
    for k in ks:
        results = elbo(
            engine,
            engine.tokenizer,
            chunked,
            k,
            context_tokens=args.context_tokens,
            thought_tokens=args.thought_tokens,
            seed=args.seed,
        )
        mean = sum(result.elbo for result in results) / len(results)
        record[f"elbo_{k}_per_document"] = mean
        print(f"ELBO({k}) {mean:.3f} nats/document (raw log p {-nll.nll / len(texts):.3f})")
    if args.out:
        write_text(args.out, json.dumps(record, indent=2) + "\n")
    return 0
