"""Versioned model files: `models.toml` checked on the deployer (manifest), and the program the
host runs to fetch and verify the files into its content-addressed blob store (fetcher)."""
