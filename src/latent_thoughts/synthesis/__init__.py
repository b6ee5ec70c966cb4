"""Teacher synthesis (METHOD section 4): a teacher writes one latent thought per chunk.

- :mod:`~latent_thoughts.synthesis.teachers`: TEACHER.yaml options and building the engine;
- :mod:`~latent_thoughts.synthesis.pipeline`: work items, shards, the online loop, output files;
- :mod:`~latent_thoughts.synthesis.batch`: the OpenAI Batch API path with resume;
- :mod:`~latent_thoughts.synthesis.costs`: prices, token counting and the dry-run projection;
- :mod:`~latent_thoughts.synthesis.stage`: the stage end to end (run, dry run, merge);
- :mod:`~latent_thoughts.synthesis.view`: a document printed with its thoughts.

The result cache and the sharding live in :mod:`latent_thoughts.generation` (the E-step uses them
too); their names are re-exported here for convenience.
"""

from latent_thoughts.generation.cache import CacheRecord, ResultCache, cache_key
from latent_thoughts.generation.shards import parse_shard, select_shard
from latent_thoughts.synthesis.costs import Prices, Projection, TokenCounter, make_counter, project_usage
from latent_thoughts.synthesis.pipeline import (
    Sampling,
    WorkItem,
    draw_wrap_style,
    failure_reason,
    latent_work,
    rephrase_work,
)
from latent_thoughts.synthesis.stage import SynthesisRequest, merge_shards, project_run, run_synthesis
from latent_thoughts.synthesis.teachers import TeacherConfig, build_teacher, load_teacher

__all__ = [
    "CacheRecord",
    "Prices",
    "Projection",
    "ResultCache",
    "Sampling",
    "SynthesisRequest",
    "TeacherConfig",
    "TokenCounter",
    "WorkItem",
    "build_teacher",
    "cache_key",
    "draw_wrap_style",
    "failure_reason",
    "latent_work",
    "load_teacher",
    "make_counter",
    "merge_shards",
    "parse_shard",
    "project_run",
    "project_usage",
    "rephrase_work",
    "run_synthesis",
    "select_shard",
]
