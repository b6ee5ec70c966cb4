"""The bootstrapped EM loop (METHOD sections 5 and 6).

So far its E-step's per-chunk computation: :mod:`latent_thoughts.em.estep` samples K thoughts in the
posterior role with an explicit stop rule and scores them in both roles on one numeric path. The
stage over a corpus (selection, ELBO and ESS, shards, the iteration loop) composes these pieces.
"""
