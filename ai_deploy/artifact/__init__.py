"""Building the release artifact (a deterministic tar.gz) and checking one before a deploy, its
models.toml included (models_manifest)."""
