"""Scale-out on Ray: the speed-up of ``--executor ray`` from 1 to 2 workers (actors) on this machine.

Two workloads over the same testbed chunks (one sentence a chunk, the testbed's own chunking):

- the E-step (``run_on_ray`` of an ``EStepStage``) with a small randomly initialised Llama (hidden 128, 4 layers, a
  512-id byte-level BPE trained on the documents): K = 4 thoughts of up to 32 tokens per chunk,
  scored in both roles;
- synthesis (``run_on_ray`` of a ``SynthesisStage``) with the same model as an in-process transformers teacher: one
  answer of up to 48 tokens per chunk (a random model's answers mostly run to the limit and are
  recorded as failures; every request is still sampled, which is the work measured).

One local Ray instance (``ray.init(num_cpus=4)``: 2 actors need more logical CPUs than they hold)
serves every run, so its start-up (printed once) is not in the timings; each run's wall time
includes starting its actors and loading their engines, splitting the chunks into the same 8
shards, and the merge. Each actor runs torch on one thread (Ray sets ``OMP_NUM_THREADS`` to the
actor's one CPU). Every run starts from an empty cache, and the outputs of every run are checked to be
byte-identical. A single-process run (no Ray, torch on one thread like an actor) is printed for
reference: the cost of Ray itself. The machine is shared, so ``--repeats N`` alternates the 1- and
2-worker runs N times and takes the fastest of each.
The machine's own ceiling is measured before and after (2 processes of plain matmuls against 1).
Last lines: ``estep speed-up 1 -> 2 workers: N.NNx`` and ``synthesize speed-up 1 -> 2 workers: N.NNx``.

    .venv/bin/python bench/ray_scaling.py [--docs N] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import ray
import torch
import yaml

from latent_thoughts.corpus import chunk_document, write_chunks
from latent_thoughts.em.stage import EStepConfig, EStepRequest, EStepStage
from latent_thoughts.generation.ray_pipeline import RayOptions, run_on_ray
from latent_thoughts.generation.stage import GenerationStage, run_stage
from latent_thoughts.modeling import ScratchModelConfig, count_parameters, create_llama
from latent_thoughts.synthesis.stage import SynthesisRequest, SynthesisStage
from latent_thoughts.testbed.world import TestbedConfig, generate_documents, testbed_chunk_config
from latent_thoughts.tokenizer import add_latent_tokens, train_bpe_tokenizer

SHARDS = 8


def build_inputs(folder: Path, documents: int) -> tuple[Path, Path, Path, int]:
    """Chunks, a small model folder and a transformers teacher file; returns them and the chunk count."""
    world = TestbedConfig(bootstrap_documents=documents, warm_start_documents=0, validation_documents=0)
    docs = list(generate_documents(world, "bootstrap"))
    chunks = [c for d in docs for c in chunk_document(d.doc_id, d.text, testbed_chunk_config(world))]
    chunks_path = folder / "chunks.parquet"
    write_chunks(chunks, chunks_path)
    tokenizer = train_bpe_tokenizer([d.text for d in docs], vocab_size=512)
    add_latent_tokens(tokenizer)
    spec = ScratchModelConfig(
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=344,
        max_position_embeddings=512,
    )
    model = create_llama(
        spec,
        vocab_size=len(tokenizer),
        seed=0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_dir = folder / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    print(
        f"model: {count_parameters(model) / 1e6:.2f} M parameters; {len(docs)} documents, {len(chunks)} chunks"
    )
    teacher = folder / "teacher.yaml"
    teacher.write_text(
        yaml.safe_dump(
            {
                "kind": "transformers",
                "transformers": {"model": str(model_dir), "device": "cpu", "dtype": "fp32", "seed": 0},
                "sampling": {"temperature": 0.7, "max_new_tokens": 48, "seed": 0},
                "batch_size": 16,
            }
        )
    )
    return chunks_path, model_dir, teacher, len(chunks)


def estep_request(chunks: Path, model: Path, out: Path) -> EStepRequest:
    config = EStepConfig(k=4, max_thought_tokens=32, batch_chunks=16, seed=0)
    return EStepRequest(model, chunks, out, config, device="cpu", dtype="fp32", progress=False)


def stage_builders(chunks: Path, model: Path, teacher: Path) -> dict[str, Callable[[Path], GenerationStage]]:
    """The two workloads as generation stages writing a given output, by their verb."""
    return {
        EStepStage.name: lambda out: EStepStage(estep_request(chunks, model, out)),
        SynthesisStage.name: lambda out: SynthesisStage(
            SynthesisRequest(chunks, teacher, out, progress=False)
        ),
    }


def run_ray(stage: GenerationStage, options: RayOptions) -> str:
    """``stage`` on Ray; which worker ran which shard."""
    return spread(run_on_ray(stage, options)["executor"]["shard_workers"])


def run_single(stage: GenerationStage) -> str:
    """``stage`` in this process."""
    run_stage(stage)
    return ""


def matmuls(count: int) -> float:
    """Seconds for ``count`` 384 x 384 fp32 matrix products on one thread (a fixed amount of CPU work)."""
    torch.set_num_threads(1)
    a = torch.randn(384, 384)
    started = time.perf_counter()
    for _ in range(count):
        a = torch.tanh(a @ a)
    return time.perf_counter() - started


def parallel_ceiling(count: int = 400, tries: int = 3) -> float:
    """What 2 processes get done together relative to 1, on this machine right now: the speed-up
    any 2-worker pipeline could reach at best (2.0 on 2 idle cores, about 1.0 when one core is busy).
    The best of ``tries`` alternated timings of each, so that a burst of other work counts less."""
    alone, together = [], []
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(matmuls, [10, 10]))  # start both processes before timing (torch import)
        for _ in range(tries):
            alone.append(matmuls(count))
            together.append(max(pool.map(matmuls, [count, count])))
    return 2 * min(alone) / min(together)


def spread(workers: list[dict[str, Any]]) -> str:
    """How the shards spread over the actors: shards and busy seconds per actor process."""
    per: dict[int, list[float]] = {}
    for worker in workers:
        per.setdefault(worker["pid"], []).append(worker["seconds"])
    return "; ".join(
        f"actor {n}: {len(s)} shards, {sum(s):.1f} s busy" for n, s in enumerate(per.values(), 1)
    )


def timed(label: str, run: Any, *args: Any) -> float:
    """Seconds ``run(*args)`` took, printed after ``label`` with what ``run`` returned."""
    started = time.monotonic()
    note = run(*args)
    elapsed = time.monotonic() - started
    print(f"  {label:<34} {elapsed:7.1f} s  {note}", flush=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=24, help="testbed documents (default 24)")
    parser.add_argument("--quick", action="store_true", help="8 documents")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each worker count, alternated; the fastest counts"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    try:
        chunks, model, teacher, _count = build_inputs(folder, 8 if args.quick else args.docs)
        stages = stage_builders(chunks, model, teacher)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        first_ceiling = parallel_ceiling()
        print(f"load average {load}; 2 processes of plain matmuls do {first_ceiling:.2f}x the work of 1 now")
        started = time.monotonic()
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        print(f"local Ray instance (num_cpus=4) started in {time.monotonic() - started:.1f} s")
        speedups: dict[str, float] = {}
        for stage, build in stages.items():
            print(f"{stage}:")
            times: dict[int, list[float]] = {1: [], 2: []}
            outputs: dict[str, bytes] = {}
            for repeat in range(args.repeats):
                for workers in (1, 2):
                    out = folder / f"{stage}-{workers}-{repeat}" / "out.parquet"
                    options = RayOptions(workers=workers, shards=SHARDS, progress=False)
                    label = f"ray, {workers} worker(s), {SHARDS} shards"
                    times[workers].append(timed(label, run_ray, build(out), options))
                    outputs[f"{workers} worker(s)"] = out.read_bytes()
            single = folder / f"{stage}-single" / "out.parquet"
            torch.set_num_threads(1)  # the actors' one thread: the same work, and the same float rounding
            timed("single process, 1 thread, no Ray", run_single, build(single))
            outputs["single process"] = single.read_bytes()
            print(f"  outputs identical ({', '.join(outputs)}): {len(set(outputs.values())) == 1}")
            speedups[stage] = min(times[1]) / min(times[2])
        last_ceiling = parallel_ceiling()
        print(f"at the end: 2 processes of plain matmuls do {last_ceiling:.2f}x the work of 1")
        ceiling = (first_ceiling + last_ceiling) / 2
        for stage, speedup in speedups.items():
            print(
                f"{stage} speed-up 1 -> 2 workers: {speedup:.2f}x "
                f"(the machine's 2-process ceiling in this run: {ceiling:.2f}x)"
            )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
