"""``latent-thoughts likelihood MODEL --documents VAL.jsonl --k 1,2,4 --out RUN/eval/likelihood.json``.

Held-out language-model metrics of raw validation documents (METHOD section 7): NLL per token and
bits per byte, and the ELBO(K) for each K asked for (:mod:`latent_thoughts.evaluate.likelihood`).
A document longer than the context is scored in sliding windows (``--stride`` new tokens per window
after the first, default half the context), so the NLL covers every token of it; the ELBO's layouts
are truncated as the E-step's (oldest prefix tokens first), and the printed line says how many were.
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

from latent_thoughts.cli.flags import MODEL_METAVAR, add_options_file, deprecated_alias
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
            "and bits per byte (a document longer than the context in sliding windows: every token scored "
            "once, with at least context - stride tokens before it), and ELBO(K) = sum over uniform chunks "
            "of log mean_k w_k with the prefix as context (cut from its oldest tokens to fit, as in the "
            "E-step), the E-step's own sampling and scoring."
        ),
    )
    parser.add_argument(
        "model",
        metavar=MODEL_METAVAR,
        help="model folder with its tokenizer, or an engine file of kind transformers",
    )
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
        "--max-thought-tokens",
        type=positive_int,
        default=64,
        help="longest thought, EOL included (default 64)",
    )
    deprecated_alias(parser, "--thought-tokens", canonical="--max-thought-tokens")
    parser.add_argument(
        "--context-tokens",
        type=positive_int,
        help="longest scored sequence in tokens: the NLL's windows and the ELBO's E-step layout "
        "(default: the model's max_position_embeddings, as the E-step's)",
    )
    parser.add_argument(
        "--stride",
        type=positive_int,
        help="NLL of a document longer than the context: new tokens scored per window after the first "
        "(1 to context - 1; default half the context)",
    )
    parser.add_argument("--limit", type=positive_int, help="use the first N documents")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the thoughts' draws")
    parser.add_argument("--device", help="auto (a GPU when there is one; the default), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="compute dtype (default auto)")
    parser.add_argument("--out", help="write the metrics to this JSON file")
    add_options_file(parser, "likelihood options")
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
    """The model (and the folder an engine file names), the documents and the options file read; the
    metrics file written (with --out). A wrong --k fails here, before anything is read."""
    from latent_thoughts.engines.spec import is_engine_file, local_model_dir, read_engine_spec

    elbo_ks(args.k)
    model_dir = (
        local_model_dir(read_engine_spec(args.model), "likelihood") if is_engine_file(args.model) else None
    )
    return RunPaths(
        inputs=[args.model, model_dir, *args.documents, args.config],
        models=[args.model, model_dir],
        files=[args.out],
    )


def run(args: argparse.Namespace) -> int:
    """Compute and print the metrics; optionally write them."""
    from latent_thoughts.corpus import read_documents
    from latent_thoughts.engines.spec import local_model_dir, open_engine, read_engine_spec
    from latent_thoughts.errors import LatentThoughtsError

    if args.limit is not None and args.limit <= 0:
        raise LatentThoughtsError(f"--limit must be a positive number of documents, got {args.limit}")
    ks = elbo_ks(args.k)
    documents = list(itertools.islice(read_documents(args.documents), args.limit))
    texts = [document.text for document in documents]
    ids = [document.doc_id for document in documents]
    if not texts:
        raise LatentThoughtsError(f"no documents in {' '.join(args.documents)}")
    spec = read_engine_spec(args.model, {"device": args.device, "dtype": args.dtype})
    local_model_dir(spec, "likelihood")  # a served model is a one-line error
    with open_engine(spec) as (engine, _):
        return _score(args, engine, texts, ids, ks)


def _score(args: argparse.Namespace, engine: Any, texts: list[str], ids: list[str], ks: list[int]) -> int:
    """Score the documents with ``engine``, print the metrics and write them with --out."""
    from latent_thoughts.atomic import write_text
    from latent_thoughts.evaluate.likelihood import elbo, raw_nll, scoring_context, uniform_chunks

    context = scoring_context(engine, args.context_tokens)
    stride = args.stride if args.stride is not None else max(context // 2, 1)
    nll = raw_nll(engine, engine.tokenizer, texts, ids=ids, context_tokens=context, stride=stride)
    record: dict[str, Any] = {
        "model": str(args.model),
        "documents": len(texts),
        "context_tokens": context,
        "stride": stride,
        "windows": nll.windows,
        "long_documents": nll.long_documents,
        "tokens": nll.tokens,
        "nll_per_token": nll.nll_per_token,
        "bits_per_byte": nll.bits_per_byte,
        "nll_per_document": nll.nll / len(texts),
    }
    windowed = (
        f" ({nll.long_documents} longer than the context of {context} tokens, scored in sliding windows "
        f"of stride {stride})"
        if nll.long_documents
        else ""
    )
    print(
        f"{len(texts)} documents{windowed}: NLL {nll.nll_per_token:.4f} nats/token, "
        f"{nll.bits_per_byte:.4f} bits/byte"
    )
    chunked = [uniform_chunks(text, args.words_per_chunk) for text in texts]
    for k in ks:
        results = elbo(
            engine,
            engine.tokenizer,
            chunked,
            k,
            context_tokens=context,
            thought_tokens=args.max_thought_tokens,
            seed=args.seed,
            ids=ids,
        )
        mean = sum(result.elbo for result in results) / len(results)
        record[f"elbo_{k}_per_document"] = mean
        chunks = sum(len(result.terms) for result in results)
        truncated = sum(result.truncated_chunks for result in results)
        dropped = sum(result.dropped_chunk_tokens for result in results)
        record["elbo_chunks"] = chunks
        record["elbo_truncated_chunks"] = truncated
        record["elbo_dropped_chunk_tokens"] = dropped
        note = ""
        if truncated:
            note = f"; {truncated} of {chunks} chunks cut to the context of {context} tokens"
            if dropped:
                note += (
                    f", {dropped} chunk tokens left out of the bound (use a smaller --words-per-chunk "
                    "or --max-thought-tokens)"
                )
        print(f"ELBO({k}) {mean:.3f} nats/document (raw log p {-nll.nll / len(texts):.3f}){note}")
    if args.out:
        write_text(args.out, json.dumps(record, indent=2) + "\n")
    return 0
