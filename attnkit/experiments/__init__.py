"""The seed's four claims, the vision Transformer beside classical baselines, and grokking on
modular arithmetic, as built-in experiments (``attnkit experiment NAME``).

Each experiment module defines ``PRESETS`` (``micro`` for tests, ``quick`` for a CPU
in minutes, ``full`` for GPUs; vision's ``full`` is its recipe as written, minutes on a CPU)
and ``run(out_dir, preset, log) -> dict``, which trains its trials as ordinary run
directories under ``out_dir/trials/`` (vision's non-attnkit baselines record theirs in
``out_dir/baselines/``), skips those already done, and writes ``results.json``, PNG plots
and ``report.md`` into ``out_dir``.
"""

EXPERIMENTS: dict[str, str] = {
    "scaling": "attnkit.experiments.scaling",
    "long-range": "attnkit.experiments.long_range",
    "parallelism": "attnkit.experiments.parallelism",
    "ablation": "attnkit.experiments.ablation",
    "vision": "attnkit.experiments.vision",
    "grokking": "attnkit.experiments.grokking",
    "forecast": "attnkit.experiments.forecast",
}
