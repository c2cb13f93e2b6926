"""The streaming product around the engine: capture → worker → publisher over ZeroMQ.

Each stage is thin: the engine (edge.engine) does the compute, edge.protocol the validation.
"""
