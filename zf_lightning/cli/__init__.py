"""Command-line entry points: thin Hydra mains (zf-train, zf-eval, zf-visualize, zf-analyze, zf-features,
zf-prepare) and zf-tables."""
