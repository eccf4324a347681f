"""The search: one Ray Tune search (`driver`), its options and space (`options`), the process it runs in
(`runtime`), the table of samplers and schedulers (`methods`), one trial (`trial`), the searchers
(`samplers`, `latency_first`, `distinct`) and schedulers (`scheduler`), latency measured through benchd
(`latency`) and predicted (`latency_model`), the study's stages as searches (`stages`, `presets`), and
Ray's console (`ray_console`)."""
