"""Benchmarks: speed, memory and quality, measured against a baseline in the same run.

``python -m bench`` runs them all and writes ``bench/results.json``; ``python -m bench --table``
renders the README table from that file. One module per benchmark: `bench.speed` (phase-2 step
time), `bench.memory` (peak memory per VRAM profile), `bench.generation`, `bench.intake`,
`bench.studio`, and `bench.ablation`, which runs the training issue's toy AR ablation
(`bench.ar_ablation`). They are not tests: nothing here asserts a time.

``python -m bench.gpu_check`` (`bench.gpu_check`) is the prepared check for a CUDA machine: per
VRAM profile in fp16 at 512 px, the full and plain steps' peaks, speed and numerical health, the
windowed and TAESD decode differences, and with ``--base`` a short real training; one JSON file.
"""
