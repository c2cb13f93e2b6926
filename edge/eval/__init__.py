"""Evaluation of the engine on MVTec-format folders: data layout, metrics and the edge-eval CLI."""
