"""Print every stage's fingerprint of EM configurations, to compare two code versions.

A refactor of ``em`` that leaves a configuration's stage fingerprints unchanged leaves its runs
resumable and its finished stages skipped. Run this under both trees (``PYTHONPATH=OLD/src``) and diff:

    .venv/bin/python bench/em_fingerprints.py > new.txt
    PYTHONPATH=../old/src .venv/bin/python bench/em_fingerprints.py > old.txt && diff old.txt new.txt

The default cases are the shipped testbed configurations and one that sets every M-step option.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latent_thoughts.em.config import load_em_config
from latent_thoughts.em.manifest import fingerprint

CASES: list[tuple[str | None, list[str]]] = [
    ("configs/em/testbed-small.yaml", []),
    ("configs/em/testbed-bolt-cpu.yaml", []),
    (
        None,
        [
            "pretrain.tokens=1M", "mstep.init=previous", "mstep.keep_warm_start=true",
            "mstep.warm_start_weight=0.3", "final_estep=true", "mstep.redraw_layouts=true",
            "estep.temperature=0.7", "mstep.tokens=3M",
        ],
    ),
]  # fmt: skip


def stage_prints(path: str | None, overrides: list[str]) -> dict[str, str]:
    """Every stage's fingerprint of one configuration (its run folder does not matter)."""
    import latent_thoughts.em.loop as loop

    config = load_em_config(path, [*overrides, "out=/tmp/fingerprints"])
    paths = loop.RunPaths(Path("/tmp/fingerprints"))
    if hasattr(loop, "get_experiment"):  # since the experiments became plug-ins
        stages = loop.plan_stages(loop.get_experiment(config.experiment), config, paths)
    else:
        stages = loop.plan_stages(config, paths)  # type: ignore[call-arg]
    prints: dict[str, str] = {}
    for stage in stages:
        prints[stage.name] = fingerprint(stage.config, [prints[name] for name in stage.upstream])
    return prints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    for path, overrides in CASES:
        print(path, overrides, json.dumps(stage_prints(path, overrides), sort_keys=True))


if __name__ == "__main__":
    main()
