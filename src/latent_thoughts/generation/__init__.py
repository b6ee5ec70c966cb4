"""What the generation stages share: teacher synthesis and the E-step both run an engine over the
chunks of a corpus, spread over shards, and must never recompute a finished request.

- :mod:`~latent_thoughts.generation.cache`: the content-addressed, kill-safe result cache;
- :mod:`~latent_thoughts.generation.shards`: ``--shard i/N`` parsing, the split of a chunk file into
  shards of whole documents, and the names of shard files.

Neither stage imports the other; both import this package.
"""
