"""A procedural "compressed math" world for CPU-scale experiments (ARCHITECTURE: ``testbed``).

- :mod:`~latent_thoughts.testbed.world`: the config, documents with per-sentence ground-truth
  thoughts, deterministic disjoint splits, and reading sentences back from text;
- :mod:`~latent_thoughts.testbed.oracle`: an oracle teacher engine with seeded noise;
- :mod:`~latent_thoughts.testbed.checker`: verifies the arithmetic claims in any thought;
- :mod:`~latent_thoughts.testbed.task`: held-out problems, prompts and exact-match grading.
"""

from latent_thoughts.testbed.checker import CheckResult, check_thought, validity_rate
from latent_thoughts.testbed.oracle import TestbedOracle
from latent_thoughts.testbed.task import (
    Problem,
    accuracy,
    extract_answer,
    grade,
    make_eval_problems,
    prompt_ids,
)
from latent_thoughts.testbed.world import (
    TestbedConfig,
    TestbedDocument,
    generate_documents,
    generate_world,
    testbed_chunk_config,
    write_documents,
)

__all__ = [
    "CheckResult",
    "Problem",
    "TestbedConfig",
    "TestbedDocument",
    "TestbedOracle",
    "accuracy",
    "check_thought",
    "extract_answer",
    "generate_documents",
    "generate_world",
    "grade",
    "make_eval_problems",
    "prompt_ids",
    "testbed_chunk_config",
    "validity_rate",
    "write_documents",
]
