"""Reports over what the stages wrote: tables and summaries a person reads.

- :mod:`~latent_thoughts.report.thought_checks`: the testbed checker run over a file of thoughts,
  summarised (validity, true claims, coverage of the chunk), as ``latent-thoughts testbed check``
  prints it;
- :mod:`~latent_thoughts.report.plots`: charts of results (the demo's accuracy bars; accuracy per
  arm, figures per EM iteration and against K, training loss, as PNG for the HTML report);
- :mod:`~latent_thoughts.report.tables`: results tables as data (``Table``, ``Text``), rendered to
  Markdown and HTML by this one module; the tables of each kind of run are built by
  :mod:`~latent_thoughts.report.bolt` (``bench/bolt.py``), :mod:`~latent_thoughts.report.arms`
  (``bench/thoughts_vs_raw.py``, Experiment A), :mod:`~latent_thoughts.report.em_run` (``em``'s
  summary and lineage) and :mod:`~latent_thoughts.report.evaluations` (``evaluate``, the demo);
- :mod:`~latent_thoughts.report.runs`: what a run folder or results file is, from its files;
  :mod:`~latent_thoughts.report.page`: one self-contained HTML page of it (``latent-thoughts report``).
"""
