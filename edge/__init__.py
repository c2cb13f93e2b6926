"""edge: PatchCore anomaly inspection for industrial camera lines."""

__version__ = "0.1.0"
