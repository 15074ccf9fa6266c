"""Checks: what can be known about a setup before paying for a run.

Reads a run config (and its model, data and cluster); writes only reports of its own (`bench.json`, `bench.md`)
and nothing into a run directory.

    preflight  `east-ds check CONFIG`: every problem of a run at once, in seconds (also run by `east-ds run`)
    smoke      `east-ds check CONFIG --smoke`: each GPU path once on tiny models, one row per path (docs/gpu.md)
    bench      `east-ds bench CONFIG`: throughput of the real pipeline's phases on this setup

Importing this package loads nothing heavy.
"""
