"""How the HTML thought viewer (``latent_thoughts.report.viewer``) copes with a large E-step: the size
of the page and the time to build it, and, where Chromium is installed, the time to first render and
the time each filter takes in the browser.

The E-step is synthetic but real: testbed documents chunked as the testbed chunks them (one sentence
a chunk), K thoughts per chunk from the testbed oracle with noise (wrong steps and irrelevant remarks
among them), tokenized by a BPE trained on the text; log q and log p are drawn (log p higher for a
valid thought), and the samples file is written by the product's own path: cache records of the
E-step stage (``record_of``), its ``build_table`` (importance resampling), ``table_summary`` and the
stage's metadata, as ``latent-thoughts estep`` writes them:

    .venv/bin/python bench/viewer_scale.py [--chunks 10000] [--k 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path


def make_run(out: Path, chunks_wanted: int, k: int, noise: float, seed: int) -> Path:
    """A run folder ``out`` with ``chunks.parquet`` and ``iter_1/samples.parquet`` of ``chunks_wanted``
    chunks and ``k`` samples each."""
    from latent_thoughts.atomic import write_json
    from latent_thoughts.corpus import chunk_document, write_chunks
    from latent_thoughts.em.estep import ThoughtScore
    from latent_thoughts.em.stage import (
        LAYOUT_VERSION,
        MODE,
        EStepStage,
        build_table,
        chunk_layouts,
        make_items,
        record_of,
        table_summary,
    )
    from latent_thoughts.format import SpecialIds, tokenizer_fingerprint
    from latent_thoughts.generation.cache import ResultCache
    from latent_thoughts.generation.outputs import output_paths, with_metadata, write_table
    from latent_thoughts.generation.shards import chunks_fingerprint
    from latent_thoughts.generation.stage import STAGE_KEY, stage_name
    from latent_thoughts.testbed.checker import check_thought
    from latent_thoughts.testbed.oracle import TestbedOracle
    from latent_thoughts.testbed.world import TestbedConfig, generate_documents, testbed_chunk_config
    from latent_thoughts.tokenizer import add_latent_tokens, train_bpe_tokenizer

    world = TestbedConfig(seed=seed, bootstrap_documents=chunks_wanted // 10 + 1)
    chunks = []
    for document in generate_documents(world, "bootstrap"):
        chunks += chunk_document(document.doc_id, document.text, testbed_chunk_config(world))
        if len(chunks) >= chunks_wanted:
            break
    chunks = chunks[:chunks_wanted]
    write_chunks(chunks, out / "chunks.parquet")

    oracle = TestbedOracle(noise=noise, seed=seed)
    thoughts = [
        [oracle.thought(chunk.prefix, chunk.text, index, seed) for index in range(k)] for chunk in chunks
    ]
    tokenizer = train_bpe_tokenizer(
        [chunk.text for chunk in chunks] + [t for row in thoughts for t in row], 1000
    )
    add_latent_tokens(tokenizer)
    eol = SpecialIds.from_tokenizer(tokenizer).eol

    sampling = {
        "k": k,
        "max_thought_tokens": 256,
        "context_tokens": 2048,
        "seed": seed,
        "temperature": 1.0,
        "top_p": 1.0,
    }
    model = "bench:synthetic"
    items = make_items(chunk_layouts(chunks, tokenizer, 2048, 256), model, sampling)
    by_key = {(chunk.doc_id, chunk.chunk_index): row for chunk, row in zip(chunks, thoughts, strict=True)}
    samples = out / "iter_1" / "samples.parquet"
    paths = output_paths(samples)
    rng = random.Random(seed)
    with ResultCache(paths.cache_dir, writer="all") as cache:
        records = []
        for item in items:
            scores = []
            for thought in by_key[(item.chunk.doc_id, item.chunk.chunk_index)]:
                ids = [*tokenizer(thought, add_special_tokens=False)["input_ids"], eol]
                log_q = -sum(rng.uniform(0.2, 2.0) for _ in ids)
                bonus = 3.0 if check_thought(thought, item.chunk.text).valid else -3.0
                scores.append(ThoughtScore(ids, log_q, log_q + rng.gauss(bonus, 2.0)))
            records.append(record_of(item, scores, model))
        cache.append(records)
        table, missing = build_table(items, cache, tokenizer, "importance", seed)
    assert missing == 0
    metadata = {
        "format": 1,
        STAGE_KEY: stage_name(EStepStage),
        "mode": MODE,
        "model": model,
        "layout_version": LAYOUT_VERSION,
        "chunks_fingerprint": chunks_fingerprint(chunks),
        "sampling": sampling,
        "policy": "importance",
        "shard": None,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    write_table(with_metadata(table, metadata), paths.result)
    write_json(paths.summary, {**table_summary(table), "policy": "importance", "model": model})
    return out


BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Runs in the page: one control changed, the time its (synchronous) handler takes and the time to
# the next frame after it.
MEASURE = """async ([selector, value, event]) => {
  const control = document.querySelector(selector);
  const start = performance.now();
  control.value = value;
  control.dispatchEvent(new Event(event));
  const handled = performance.now() - start;
  await new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  return [handled, performance.now() - start, document.querySelector('#lt-viewer .lt-count').dataset.shown];
}"""

SEARCH = """async (text) => {
  const count = document.querySelector('#lt-viewer .lt-count');
  const box = document.querySelector('#lt-viewer .lt-search');
  const start = performance.now();
  box.value = text;
  box.dispatchEvent(new Event('input'));
  while (count.dataset.query !== text) await new Promise(resolve => setTimeout(resolve, 2));
  await new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  return [performance.now() - start, count.dataset.shown];
}"""


def measure_browser(page_file: Path, chromium: str) -> None:
    """Load the page in headless Chromium and print the time to first render and of each filter."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=BROWSER_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        started = time.perf_counter()
        page.goto(page_file.resolve().as_uri())
        page.wait_for_selector("#lt-viewer[data-ready='1']", timeout=120_000)
        wall = time.perf_counter() - started
        ready_at = float(page.get_attribute("#lt-viewer", "data-ready-at") or "nan")
        script = float(page.get_attribute("#lt-viewer", "data-render-ms") or "nan")
        print(
            f"first render: {ready_at:.0f} ms after navigation start (viewer script: parse the data and "
            f"render page 1 in {script:.0f} ms); goto to rendered, measured outside: {1000 * wall:.0f} ms"
        )
        for label, selector, value, event in (
            ("validity = invalid", ".lt-validity", "invalid", "change"),
            ("validity = valid", ".lt-validity", "valid", "change"),
            ("validity = all", ".lt-validity", "all", "change"),
            ("policy = highest", ".lt-policy", "2", "change"),
            ("document = the 100th", ".lt-doc", "99", "change"),
            ("document = all", ".lt-doc", "-1", "change"),
        ):
            if label.startswith("policy"):
                names = page.eval_on_selector_all(
                    ".lt-policy option", "options => options.map(o => o.textContent)"
                )
                value = str(next(i for i, name in enumerate(names) if name.startswith("highest")))
            handled, painted, shown = page.evaluate(MEASURE, [f"#lt-viewer {selector}", value, event])
            print(
                f"filter {label}: {handled:.1f} ms in the handler, {painted:.1f} ms to the next frame ({shown} chunks)"
            )
        for text in ("gives 1", "zzz-not-there"):
            elapsed, shown = page.evaluate(SEARCH, text)
            print(
                f"search {text!r}: {elapsed:.1f} ms to the next frame, 120 ms debounce included ({shown} chunks)"
            )
        page.evaluate(SEARCH, "")
        click = time.perf_counter()
        page.click("#lt-viewer .lt-next")
        print(f"next page: {1000 * (time.perf_counter() - click):.0f} ms (playwright click round trip)")
        print(f"page errors: {errors or 'none'}")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.4, help="the oracle's share of wrong thoughts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="run folder to write (default: a temporary folder)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from latent_thoughts.report.viewer import section_html, viewer_data, viewer_page

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="viewer-scale-"))
    started = time.perf_counter()
    make_run(out, args.chunks, args.k, args.noise, args.seed)
    print(
        f"wrote {out}/iter_1/samples.parquet: {args.chunks:,} chunks x K={args.k} in {time.perf_counter() - started:.1f} s"
    )

    from latent_thoughts.em.selection import policy_names

    started = time.perf_counter()
    policy_names()  # the plug-ins' policies (the testbed's checker): imports torch, once per process
    print(f"selection plug-ins loaded in {time.perf_counter() - started:.2f} s")
    started = time.perf_counter()
    data = viewer_data(out)
    built = time.perf_counter() - started
    assert data is not None
    started = time.perf_counter()
    section = section_html(data)
    rendered = time.perf_counter() - started
    size = len(section.encode("utf-8"))
    source = data["sources"][0]
    print(
        f"viewer_section: {size / 2**20:.2f} MiB of HTML ({size / args.chunks:.0f} bytes a chunk); data built in "
        f"{built:.2f} s (policies: {', '.join(source['pols'])}), HTML in {rendered:.2f} s"
    )
    stats = source["stats"]
    print(
        f"chunks {stats['chunks']:,}; selected thoughts valid {stats['valid']:.3f}; mean ESS {stats['ess']:.3f}"
    )
    page = out / "viewer.html"
    html = viewer_page(out)
    assert html is not None
    page.write_text(html, encoding="utf-8")
    print(f"page: {page}")
    if not Path(args.chromium).exists():
        print(f"no Chromium at {args.chromium}: browser timings skipped")
        return
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("playwright is not installed: browser timings skipped")
        return
    measure_browser(page, args.chromium)


if __name__ == "__main__":
    main()
