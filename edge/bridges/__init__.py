"""Clients that carry verdicts from a station's publisher into plant systems (PLC registers)."""
