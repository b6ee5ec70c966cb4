"""What the generation stages share: teacher synthesis and the E-step both run an engine over the
chunks of a corpus, spread over shards, and must never recompute a finished request.

- :mod:`~latent_thoughts.generation.stage`: the one stage contract (:class:`GenerationStage`) that
  both stages implement, the runner of any stage on a shard (the guard, the cache, resume), and the
  merge of shard files by the stage their metadata names;
- :mod:`~latent_thoughts.generation.outputs`: a run's output files (``NAME.parquet``, its failures
  and summary, ``NAME.cache/``, shard names) and the run description in their Parquet metadata;
- :mod:`~latent_thoughts.generation.cache`: the content-addressed, kill-safe result cache;
- :mod:`~latent_thoughts.generation.shards`: the chunk file and its fingerprint, ``--shard i/N``
  parsing, the split into shards of whole documents, and the names of shard files;
- :mod:`~latent_thoughts.generation.ray_pipeline`: ``--executor ray``, the shards through a pool of
  Ray actors holding one engine each, then the stage's merge;
- :mod:`~latent_thoughts.generation.slurm`: ``--executor slurm``, the shards as a submitit job array,
  then the merge, each job running :mod:`~latent_thoughts.generation.run_shard` on the stage's spec.

The stages import this package; this package imports no stage (the executors take any stage through
the contract, and a spec file or an output's metadata names its stage's class).
"""
