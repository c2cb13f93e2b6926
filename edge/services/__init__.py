"""The station's processes (capture per camera, worker, publisher) and the `edge-run` supervisor:
thin mains that read the station configuration (edge.config) and run edge.pipeline's objects."""
