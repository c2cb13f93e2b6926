"""edge-publisher: publishes verdicts, masks and heartbeats; answers TIMEOUT for parts no worker answered."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from edge.cli_support import run_cli
from edge.config import StationConfig
from edge.lifecycle import stop_on_signals
from edge.metrics import for_publisher
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.services.runtime import (
    curve_server,
    operate,
    service_parser,
    start_service,
    state_file,
)

log = logging.getLogger("edge.publisher")


def journal_path(config: StationConfig) -> Path | None:
    """The ledger's journal: the configured file, else one in systemd's StateDirectory or in
    edge-run's run folder; None (with a warning) for a publisher started by hand without either."""
    if config.publisher.journal:
        return Path(config.publisher.journal)
    path = state_file(f"publisher-{config.station}.journal")
    if path is not None:
        return path
    log.warning(
        "no journal (publisher.journal, or STATE_DIRECTORY under systemd): a restart of this "
        "publisher forgets the parts it was waiting for"
    )
    return None


def replay_path(config: StationConfig, journal: Path | None) -> Path | None:
    """The replay store: the configured file, else beside the journal; None (in memory, with a
    warning) where there is neither."""
    if config.publisher.replay_file:
        return Path(config.publisher.replay_file)
    if journal is not None:
        return journal.with_name(f"publisher-{config.station}.replay.sqlite")
    log.warning("no replay file (publisher.replay_file): verdicts are kept for replay in memory only")
    return None


def publisher_settings(config: StationConfig) -> PublisherSettings:
    journal = journal_path(config)
    return PublisherSettings(
        station=config.station,
        results_endpoint=config.endpoints.results,
        publish_endpoint=config.endpoints.publish,
        latest_endpoint=config.endpoints.latest,
        heartbeat_s=config.publisher.heartbeat_s,
        default_deadline_ms=config.publisher.default_deadline_ms,
        curve=curve_server(config.security.publisher),
        startup_hold_s=config.publisher.startup_hold_s,
        journal=journal,
        cameras=tuple(config.camera_names),
        reorder_window_ms=config.publisher.reorder_window_ms,
        replay=replay_path(config, journal),
        replay_s=config.publisher.replay_s,
    )


def _main(argv: list[str] | None) -> int:
    args = service_parser("edge-publisher", __doc__.split("\n\n")[0]).parse_args(argv)
    config = start_service(args)
    stop = stop_on_signals()
    publisher = Publisher(publisher_settings(config))
    metrics = for_publisher(publisher, config.station)
    status = f"publishing on {config.endpoints.publish}"
    return operate("publisher", publisher.run, stop, metrics, config.publisher.metrics_port, status)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
