"""Throughput of the trainer against a plain PyTorch loop and an unpacked trainer, and model FLOPs utilisation.

In one process, on the same data (testbed documents with oracle thoughts) and the same scratch
Llama (by default the testbed recipe's shape, :class:`latent_thoughts.recipes.testbed.TestbedRecipe`):

1. **packed**: ``latent_thoughts.train.train`` as is: documents back to back in windows of
   ``--seq-len`` tokens, every position a real token;
2. **plain**: the same windows, initial weights and optimiser settings in the plain PyTorch loop of
   ``bench/plain_loop.py`` (no Trainer): the lower bound on per-step overhead;
3. **padded**: one document per example (cut at ``--seq-len``), a micro-batch padded to its
   longest example, as a trainer without packing would do; the micro-batch holds as many documents
   as make about the same number of tokens as a packed micro-batch.

All train on the same number of real (non-padding) tokens. Reported: real tokens per second of
each, ``trainer/plain`` and ``packed/padded``, and the packed run's model FLOPs per second
(``6 N + 12 L d T`` per token, see ``latent_thoughts.train.budget``) as a share of the
matrix-multiply peaks measured in the same process (``torch.matmul`` of 2048 x 2048 matrices in
bf16 and fp32). The run trains in the precision ``auto`` picks: bf16 autocast only where the CPU
has native bf16 instructions (on an AVX2-only CPU bf16 is emulated and its "peak" is about 1
GFLOP/s, so the fp32 share is the meaningful one there).

    .venv/bin/python bench/train.py            # a couple of minutes on 2 CPU cores
    .venv/bin/python bench/train.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import Trainer, TrainerCallback

from latent_thoughts.corpus import ChunkConfig, chunk_document, write_chunks
from latent_thoughts.engines.transformers_engine import cpu_supports_bf16
from latent_thoughts.format import DocumentBuilder
from latent_thoughts.recipes.testbed import TestbedRecipe
from latent_thoughts.testbed import TestbedConfig, TestbedOracle, generate_documents
from latent_thoughts.tokenizer import load_tokenizer
from latent_thoughts.train import TrainConfig, model_flops_per_token, train
from latent_thoughts.train.data import build_documents, read_sources
from latent_thoughts.train.trainer import prepare_model, resolve_precision, training_arguments

sys.path.insert(0, str(Path(__file__).parent))
from plain_loop import plain_train, training_windows


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of ``torch.matmul`` on two ``size`` x ``size`` matrices of ``dtype`` (best of repeats)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)  # warm-up
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def measured_peaks() -> dict[str, float]:
    """Matmul peaks of this process in bf16 (1024^3: on a CPU without native bf16 one 2048^3 product
    takes seconds) and fp32 (2048^3), in FLOP/s."""
    return {"bf16": matmul_peak(torch.bfloat16, size=1024), "fp32": matmul_peak(torch.float32)}


def write_data(out: Path, documents: int) -> dict[str, Path]:
    """Testbed documents chunked (2 sentences a chunk on average) with the oracle's thoughts."""
    out.mkdir(parents=True, exist_ok=True)
    world = TestbedConfig(bootstrap_documents=documents)
    oracle = TestbedOracle.from_config(world)
    chunks = [
        chunk
        for document in generate_documents(world, "bootstrap")
        for chunk in chunk_document(document.doc_id, document.text, ChunkConfig(mean_sentences=2))
    ]
    write_chunks(chunks, out / "chunks.parquet")
    rows = {
        "doc_id": [c.doc_id for c in chunks],
        "chunk_index": [c.chunk_index for c in chunks],
        "thought": [oracle.thought(c.prefix, c.text) for c in chunks],
    }
    pq.write_table(pa.table(rows), out / "thoughts.parquet")
    return {"chunks": out / "chunks.parquet", "thoughts": out / "thoughts.parquet"}


class StepTimer(TrainerCallback):
    """Records when each optimizer step ends, to time the steady state (the first step, with its
    warm-up and the Trainer's start-up, is left out of the throughput)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter())

    def steady_rate(self, total_tokens: float) -> float:
        """Tokens per second over steps 2..N, assuming ``total_tokens`` spread evenly over the steps."""
        steps = len(self.times)
        if steps < 2:
            raise RuntimeError("need at least two steps to time")
        return total_tokens * (steps - 1) / steps / (self.times[-1] - self.times[0])


class PaddedDocuments(torch.utils.data.Dataset):
    """One training document per example, cut at ``seq_len`` tokens."""

    def __init__(self, documents: list[list[int]]) -> None:
        self.documents = documents

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> list[int]:
        return self.documents[index]


class PadToLongest:
    """Collate documents into a right-padded batch with attention mask; padding labels are -100."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        labels = input_ids.masked_fill(mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def padded_run(config: TrainConfig, real_tokens: int) -> dict[str, Any]:
    """Train the same model on per-example padded batches until ``real_tokens`` real tokens are seen."""
    tokenizer = load_tokenizer(Path(config.output_dir) / "tokenizer")
    builder = DocumentBuilder(tokenizer, config.data.format)
    seq_len = config.data.format.seq_len
    documents = [
        list(map(int, doc[:seq_len]))
        for doc in build_documents(read_sources(config.data.sources)[0], builder)
    ]
    mean_length = statistics.fmean(len(doc) for doc in documents)
    # As many documents per micro-batch as fill about as many tokens as a packed micro-batch.
    per_micro = max(1, round(config.optim.micro_batch * seq_len / mean_length))
    chosen, total, index = [], 0, 0
    while total < real_tokens:
        document = documents[index % len(documents)]
        chosen.append(document)
        total += len(document)
        index += 1
    steps = len(chosen) // per_micro
    chosen = chosen[: steps * per_micro]
    padded_config = config.model_copy(
        update={
            "output_dir": config.output_dir + "-padded",
            "optim": config.optim.model_copy(update={"micro_batch": per_micro, "global_batch": per_micro}),
        }
    )
    args = training_arguments(padded_config, max_steps=steps, has_validation=False)
    args.save_strategy = "no"
    model = prepare_model(config, tokenizer)
    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=PaddedDocuments(chosen),
        data_collator=PadToLongest(int(tokenizer.pad_token_id)),
        callbacks=[timer],
    )
    trainer.train()
    real = sum(len(doc) for doc in chosen)
    padded_width = 0
    for first in range(0, len(chosen), per_micro):
        batch = chosen[first : first + per_micro]
        padded_width += max(len(doc) for doc in batch) * len(batch)
    return {
        "real_tokens": real,
        "padded_tokens": padded_width,
        "tokens_per_second": timer.steady_rate(real),
        "documents_per_micro_batch": per_micro,
        "mean_document_tokens": mean_length,
        "steps": steps,
    }


def main() -> None:
    """Run both arms and the matmul peak; print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/train")
    parser.add_argument("--quick", action="store_true")
    recipe = TestbedRecipe()
    parser.add_argument("--tokens", type=int, help="real training tokens per arm (default 160k, quick 32k)")
    parser.add_argument("--width", type=int, default=recipe.width)
    parser.add_argument("--layers", type=int, default=recipe.layers)
    parser.add_argument("--vocab", type=int, default=recipe.vocab_size)
    parser.add_argument("--seq-len", type=int, default=recipe.seq_len)
    parser.add_argument("--micro-batch", type=int, default=recipe.batch)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    args = parser.parse_args()
    tokens = args.tokens or (32_768 if args.quick else 163_840)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    files = write_data(out / "data", 250)
    config = TrainConfig.model_validate(
        {
            "output_dir": str(out / "packed"),
            "model": {
                "bpe_vocab_size": args.vocab,
                "scratch": {
                    "hidden_size": args.width,
                    "num_layers": args.layers,
                    "num_heads": 4,
                    "num_kv_heads": 4,
                    "intermediate_size": args.width * 8 // 3,
                    "max_position_embeddings": args.seq_len,
                },
            },
            "data": {
                "sources": [
                    {"kind": "thoughts", "chunks": str(files["chunks"]), "thoughts": str(files["thoughts"])}
                ],
                "format": {"seq_len": args.seq_len},
            },
            "budget": {"tokens": tokens},
            "optim": {
                "lr": 1e-3,
                "warmup_steps": 5,
                "global_batch": args.micro_batch,
                "micro_batch": args.micro_batch,
            },
            "precision": args.precision,
            "logging_steps": 10,
            "save_steps": 100_000,
            "progress_bar": False,
        }
    )
    precision = resolve_precision(config.precision)

    peaks_before = measured_peaks()
    timer = StepTimer()
    packed = train(config, callbacks=[timer])
    tokenizer = load_tokenizer(Path(config.output_dir) / "tokenizer")
    plain = plain_train(
        prepare_model(config, tokenizer),
        training_windows(config, tokenizer),
        config.optim,
        packed.steps,
        precision == "bf16",
        config.seed,
    )
    plain_tps = plain.steady_tokens_per_second(args.seq_len * args.micro_batch)
    padded = padded_run(config, packed.tokens)
    peaks_after = measured_peaks()
    peaks = {name: max(peaks_before[name], peaks_after[name]) for name in peaks_before}

    tokenizer_size = len(load_tokenizer(Path(config.output_dir) / "tokenizer"))
    model = prepare_model(config, load_tokenizer(Path(config.output_dir) / "tokenizer"))
    flops_per_token = model_flops_per_token(model, args.seq_len)
    packed_tps = timer.steady_rate(packed.tokens)
    print(
        f"model: scratch Llama width {args.width}, {args.layers} layers, vocabulary {tokenizer_size}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters; precision {precision}; "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"packed: {packed.tokens:,} tokens in windows of {args.seq_len} x {args.micro_batch} "
        f"({packed.steps} steps): {packed_tps:,.0f} tokens/s"
    )
    print(
        f"padded: {padded['real_tokens']:,} real tokens ({padded['padded_tokens']:,} with padding, "
        f"{padded['documents_per_micro_batch']} documents of mean {padded['mean_document_tokens']:.0f} tokens "
        f"per batch, {padded['steps']} steps): {padded['tokens_per_second']:,.0f} real tokens/s"
    )
    print(f"plain PyTorch loop, same windows and weights: {plain_tps:,.0f} tokens/s")
    print(f"trainer/plain: {packed_tps / plain_tps:.2f}x")
    print(f"packed / padded: {packed_tps / padded['tokens_per_second']:.2f}x")
    model_flops = packed_tps * flops_per_token
    emulated = not torch.cuda.is_available() and not cpu_supports_bf16()
    print(
        f"model FLOPs/s (packed): {model_flops / 1e9:.2f} GFLOP/s at {flops_per_token / 1e6:.1f} MFLOP/token"
    )
    for name, peak in peaks.items():
        print(
            f"  share of the {name} matmul peak (same process, best of before {peaks_before[name] / 1e9:.1f} "
            f"and after {peaks_after[name] / 1e9:.1f} GFLOP/s): {model_flops / peak:.1%}"
            + ("  <- the precision this run trained in" if name == precision else "")
            + (
                "  (bf16 is emulated on this CPU: no AVX512-BF16 or AMX)"
                if name == "bf16" and emulated
                else ""
            )
        )
    print("throughput is timed from the end of step 1 to the last step (start-up and warm-up left out)")


if __name__ == "__main__":
    main()
