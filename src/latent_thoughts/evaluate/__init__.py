"""Evaluation: benchmark tasks with latent-aware prompting, answer grading and likelihood metrics.

Only the testbed task exists so far: :func:`latent_thoughts.evaluate.testbed.evaluate_testbed`.
"""
