"""What one host looks like and how it changes: paths, settings, facts, operations, the release
gate and the deploy strategies."""
