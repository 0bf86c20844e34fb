"""The end-to-end pipeline shared by ``circuits demo``, the examples and the CLI."""
