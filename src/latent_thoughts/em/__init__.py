"""The bootstrapped EM loop (METHOD sections 5 and 6).

- :mod:`~latent_thoughts.em.estep`: the E-step of one chunk: K thoughts sampled in the posterior role
  with an explicit stop rule, scored in both roles on one numeric path; the bound and the ESS;
- :mod:`~latent_thoughts.em.selection`: the policies that pick one of a chunk's K thoughts;
- :mod:`~latent_thoughts.em.stage`: the E-step over a chunk file (``latent-thoughts estep``), cached,
  resumable and sharded;
- :mod:`~latent_thoughts.em.config`, :mod:`~latent_thoughts.em.manifest`, :mod:`~latent_thoughts.em.loop`:
  ``latent-thoughts em``, its options, its lineage and resume rules, and its stages.
"""
