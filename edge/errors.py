"""Errors that reach a user: each carries a message that says what to do, never a traceback."""


class EdgeError(Exception):
    """Base of every error edge reports to a user; CLIs print the message and exit non-zero."""

    exit_code = 1


class UsageError(EdgeError):
    """The user asked for something that cannot work (bad option, missing folder)."""

    exit_code = 2


class WeightsError(EdgeError):
    """Backbone weights are missing, foreign or damaged."""

    exit_code = 3


class ArtifactError(EdgeError):
    """A model file is truncated, corrupted, foreign or does not fit this edge version."""

    exit_code = 4


class ImageError(EdgeError):
    """An image cannot be read or has an unsupported layout."""

    exit_code = 5


class ConfigError(UsageError):
    """The station configuration is invalid; the message names each key's path and what was expected."""

    exit_code = 6
