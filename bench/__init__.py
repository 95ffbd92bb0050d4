"""Benchmarks: speed, memory and quality, measured against a baseline in the same run.

``python -m bench`` runs them all and writes ``bench/results.json``; ``python -m bench --table``
renders the README table from that file. One module per benchmark: `bench.speed` (phase-2 step
time), `bench.memory` (peak memory per VRAM profile), `bench.generation`, `bench.intake`,
`bench.studio`, and `bench.ablation`, which runs the training issue's toy AR ablation
(`bench.ar_ablation`). They are not tests: nothing here asserts a time.
"""
