"""Evaluation: built-in task families (ppl, mc, math, reasoning), a batched deterministic harness,
paired multi-checkpoint comparison, decontamination reports and lineage records.

Nothing is imported here: `diji.eval.harness.evaluate` is the entry point for code, `diji eval` for people.
"""
