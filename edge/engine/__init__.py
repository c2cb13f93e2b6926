"""The PatchCore engine: a library of pure compute that knows nothing of cameras, sockets or files
it was not asked to read. Entry point: `edge.engine.model.PatchCore`."""
