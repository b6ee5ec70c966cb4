"""What the generation stages share: teacher synthesis and the E-step both run an engine over the
chunks of a corpus, spread over shards, and must never recompute a finished request.

- :mod:`~latent_thoughts.generation.cache`: the content-addressed, kill-safe result cache;
- :mod:`~latent_thoughts.generation.shards`: ``--shard i/N`` parsing, the split of a chunk file into
  shards of whole documents, and the names of shard files;
- :mod:`~latent_thoughts.generation.ray_pipeline`: ``--executor ray``, the shards through a pool of
  Ray actors holding one engine each, then the stage's merge;
- :mod:`~latent_thoughts.generation.slurm`: ``--executor slurm``, the shards as a submitit job array,
  then the merge.

Neither stage imports the other; both import this package (the executors import the stages only
inside their functions).
"""
