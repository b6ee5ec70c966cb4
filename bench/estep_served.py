"""The E-step through ``latent-thoughts serve`` against the same E-step in process: time, where it goes,
and whether both draw the same thoughts.

Workload: a randomly initialised tiny Llama (width 32, 2 layers, ``--positions`` positions) over the
Llama-2 SentencePiece tokenizer with the four latent tokens (32,004 ids), ``--chunks`` chunks of the
textbook documents of ``../shared/corpus`` (``--sentences`` sentences a chunk on average, the
``--prefix-chunks`` chunks before it as its prefix; the context cuts the long ones), K thoughts per
chunk of up to ``--max-thought-tokens`` tokens (a random model rarely writes EOL, so nearly every thought
runs to the budget). The stage is the real one (``latent_thoughts.em.stage.run_estep``), first with
the model in process, then with ``base_url`` pointing at ``latent-thoughts serve``'s app (uvicorn in
a thread of this process, same torch threads) and the HTTP engine's default options (8 prompts a
request, 8 requests in flight).

Totals are CPU time of this process (user + system, all threads: the server's and the client's),
which a loaded machine disturbs far less than wall time; both are printed. The breakdown times the
engine calls in the thread that makes them (exact with one torch thread): sampling and scoring as
the stage sees them in process, and inside the server the model's own work (``sample``; ``score``
and ``score_groups`` for the echoed prompts). What a served run spends beyond the server's model is
the wire: JSON, each token's text in the log-probs, HTTP.

Last lines: ``identical first samples: N/M`` and ``ratio: X.XXx`` (served CPU time over in-process).

    .venv/bin/python bench/estep_served.py [--positions 1024] [--max-thought-tokens 256] [--chunks 24]
        [--sentences 8] [--prefix-chunks 1] [--k 4] [--dtype auto|bf16|fp32] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from latent_thoughts.corpus import ChunkConfig, chunk_document, read_documents, write_chunks
from latent_thoughts.em.stage import EStepConfig, EStepRequest, run_estep
from latent_thoughts.engines.http_engine import HTTPEngine
from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.modeling import ScratchModelConfig, create_llama
from latent_thoughts.server import create_app
from latent_thoughts.tokenizer import add_latent_tokens, load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared"


class Clock:
    """CPU and wall seconds spent in named calls: the methods of a class wrapped by :meth:`timing`.
    CPU time is the calling thread's (exact with one torch thread: the model runs in the caller)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def timing(self, owner: type, names: dict[str, str]) -> Iterator[None]:
        """Time ``owner``'s methods (method name -> label) while the block runs."""
        originals = {method: getattr(owner, method) for method in names}

        def timed(inner: Callable[..., Any], label: str) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                cpu, wall = time.thread_time(), time.perf_counter()  # the calling thread's CPU time
                try:
                    return inner(*args, **kwargs)
                finally:
                    self.cpu[label] += time.thread_time() - cpu
                    self.wall[label] += time.perf_counter() - wall

            return call

        for method, label in names.items():
            setattr(owner, method, timed(originals[method], label))
        try:
            yield
        finally:
            for method, inner in originals.items():
                setattr(owner, method, inner)


def build(root: Path, positions: int, count: int, sentences: float, prefix: int) -> tuple[Path, Path]:
    """The model folder and a chunk file of ``count`` chunks."""
    tokenizer = load_tokenizer(SHARED / "tokenizers" / "llama2")
    add_latent_tokens(tokenizer)
    spec = ScratchModelConfig(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
    )
    model = create_llama(
        spec,
        vocab_size=len(tokenizer),
        seed=0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    texts = [
        doc for doc in read_documents([SHARED / "corpus" / "math_textbooks.jsonl"]) if len(doc.text) > 4000
    ]
    chunks = [
        chunk
        for doc in texts[:12]
        for chunk in chunk_document(
            doc.doc_id, doc.text[:8000], ChunkConfig(mean_sentences=sentences, prefix_chunks=prefix)
        )
    ]
    write_chunks(chunks[:count], root / "chunks.parquet")
    return root / "model", root / "chunks.parquet"


@contextlib.contextmanager
def served(engine: TransformersEngine, name: str, state: Path) -> Iterator[str]:
    """``latent-thoughts serve``'s app over ``engine`` in a thread; yields the API root."""
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine, name, state), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def timed_run(request: EStepRequest) -> tuple[float, float]:
    """CPU and wall seconds of one E-step run."""
    cpu, wall = time.process_time(), time.perf_counter()
    run_estep(request)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument(
        "--max-thought-tokens", "--thought-tokens", dest="thought_tokens", type=int, default=256
    )
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--sentences", type=float, default=8.0, help="mean sentences a chunk")
    parser.add_argument("--prefix-chunks", type=int, default=1, help="earlier chunks in a chunk's prefix")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="estep-served-"))
    try:
        model, chunks = build(root, args.positions, args.chunks, args.sentences, args.prefix_chunks)
        config = EStepConfig(k=args.k, max_thought_tokens=args.thought_tokens, seed=0)
        clock = Clock()
        results = {}
        local_timers = {"sample": "in-process: sample", "score_groups": "in-process: score"}
        with clock.timing(TransformersEngine, local_timers):
            request = EStepRequest(
                model, chunks, root / "in-process.parquet", config, device="cpu", dtype=args.dtype
            )
            results["in-process"] = timed_run(replace(request, progress=False))
        engine = TransformersEngine(
            TransformersEngineConfig(model=str(model), device="cpu", dtype=args.dtype)
        )
        server_timers = {
            "sample": "served: server's model, sample",
            "score": "served: server's model, score",
            "score_groups": "served: server's model, score",  # echoes sharing a prefix (the rests)
        }
        client_timers = {
            "sample": "served: sample (client, wall)",
            "score_groups": "served: score (client, wall)",
        }
        with (
            clock.timing(TransformersEngine, server_timers),
            clock.timing(HTTPEngine, client_timers),
            served(engine, "model", root / "state") as base_url,
        ):
            request = EStepRequest(model, chunks, root / "served.parquet", config, base_url=base_url)
            results["served"] = timed_run(replace(request, progress=False))
        for kind, (cpu, wall) in results.items():
            print(f"{kind:>10}: {cpu:7.1f} s CPU, {wall:7.1f} s wall", flush=True)
        for name in sorted(clock.cpu):
            print(f"  {name:<36} {clock.cpu[name]:7.1f} s CPU {clock.wall[name]:7.1f} s wall")
        local = pq.read_table(root / "in-process.parquet").to_pylist()
        remote = pq.read_table(root / "served.parquet").to_pylist()
        same = sum(a["samples"][0] == b["samples"][0] for a, b in zip(local, remote, strict=True))
        truncated = sum(row["dropped_tokens"] > 0 for row in local)
        print(
            f"chunks {len(local)} ({truncated} cut by the context), K={args.k}, thoughts <= {args.thought_tokens}"
        )
        print(f"identical first samples: {same}/{len(local)}")
        print(f"ratio: {results['served'][0] / results['in-process'][0]:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
