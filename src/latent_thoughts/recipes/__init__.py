"""Experiment recipes: how the library's stages are tied into experiments.

The library (corpus, format, train, em, evaluate, ...) knows no experiment; a recipe chooses the data,
the model, the budgets and the evaluation. ``testbed`` is the procedural world's recipe (the demo and
``bench/`` use it); ``testbed_em`` and ``corpus_em`` are the two experiments ``latent-thoughts em``
runs (registered as plug-ins, :mod:`latent_thoughts.em.experiment`).
"""
