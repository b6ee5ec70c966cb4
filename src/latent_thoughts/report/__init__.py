"""Reports over what the stages wrote: tables and summaries a person reads.

- :mod:`~latent_thoughts.report.thought_checks`: the testbed checker run over a file of thoughts,
  summarised (validity, true claims, coverage of the chunk), as ``latent-thoughts testbed check``
  prints it;
- :mod:`~latent_thoughts.report.plots`: charts of results (the demo's accuracy bars).
"""
