"""edge-broker: hands a station's frames to its pool of workers, each only what it can take."""

from __future__ import annotations

import logging
import sys

from edge.cli_support import run_cli
from edge.config import StationConfig
from edge.errors import ConfigError
from edge.lifecycle import stop_on_signals
from edge.metrics import for_broker
from edge.pipeline.broker import Broker, BrokerSettings
from edge.services.runtime import curve_server, operate, selections_path, service_parser, start_service

log = logging.getLogger("edge.broker")


def broker_settings(config: StationConfig) -> BrokerSettings:
    if config.endpoints.workers is None:
        raise ConfigError("endpoints.workers is not set: this station has no worker pool, so no broker")
    security = config.security
    return BrokerSettings(
        station=config.station,
        frames_endpoint=config.endpoints.frames,
        workers_endpoint=config.endpoints.workers,
        control_endpoint=config.endpoints.control,
        worker_timeout_s=config.broker.worker_timeout_s,
        frames_curve=curve_server(security.frames.worker if security.frames else None, "frames"),
        workers_curve=curve_server(security.workers.broker if security.workers else None, "workers"),
        recipes=tuple(recipe.name for recipe in config.recipe_list),
        selections=selections_path(config),
    )


def _main(argv: list[str] | None) -> int:
    args = service_parser("edge-broker", __doc__.split("\n\n")[0]).parse_args(argv)
    config = start_service(args)
    stop = stop_on_signals()
    broker = Broker(broker_settings(config))
    metrics = for_broker(broker, config.station)
    status = f"frames from {config.endpoints.frames} to workers at {config.endpoints.workers}"
    return operate("broker", broker.run, stop, metrics, config.broker.metrics_port, status)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
