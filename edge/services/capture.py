"""edge-capture: one camera's capture process (one per camera; systemd template unit edge-capture@)."""

from __future__ import annotations

import logging
import sys

import zmq

from edge.cli_support import run_cli
from edge.config import (
    AravisSourceConfig,
    CameraConfig,
    FolderSourceConfig,
    OpenCVSourceConfig,
    StationConfig,
    SyntheticSourceConfig,
)
from edge.lifecycle import stop_on_signals
from edge.metrics import for_capture
from edge.pipeline.capture import Capture, CaptureSettings
from edge.pipeline.gige import AravisSource, GigESettings
from edge.pipeline.sources import FolderSource, FrameSource, OpenCVSettings, OpenCVSource, SyntheticSource
from edge.services.runtime import (
    curve_client,
    operate,
    service_parser,
    start_service,
)

log = logging.getLogger("edge.capture")


def open_source(camera: CameraConfig) -> FrameSource:
    source = camera.source
    if isinstance(source, OpenCVSourceConfig):
        settings = OpenCVSettings(**source.model_dump(exclude={"kind", "uri"}))
        return OpenCVSource(source.uri, camera=camera.name, settings=settings)
    if isinstance(source, AravisSourceConfig):
        fields = source.model_dump(exclude={"kind", "region"})
        region = (
            (source.region[0], source.region[1], source.region[2], source.region[3])
            if source.region
            else None
        )
        gige = GigESettings(**fields, region=region, triggered=camera.trigger == "triggered")
        return AravisSource(gige, camera=camera.name)
    if isinstance(source, FolderSourceConfig):
        return FolderSource(source.path, source.rate_hz, source.loop, camera=camera.name)
    if isinstance(source, SyntheticSourceConfig):
        return SyntheticSource(source.size, source.defect_rate, source.count, source.seed, source.rate_hz,
                               camera=camera.name)  # fmt: skip
    raise TypeError(f"no source for {source!r}")


def capture_settings(config: StationConfig, camera: CameraConfig) -> CaptureSettings:
    return CaptureSettings(
        station=config.station,
        camera=camera.name,
        frames_endpoint=config.endpoints.frames,
        trigger=camera.trigger,
        deadline_ms=camera.deadline_ms,
        stale_after_s=camera.stale_after_s,
        trigger_timeout_ms=camera.trigger_timeout_ms,
        results_endpoint=config.endpoints.results,
        trigger_endpoint=camera.trigger_endpoint,
        curve=curve_client(config.security.frames.capture if config.security.frames else None),
    )


def _main(argv: list[str] | None) -> int:
    parser = service_parser("edge-capture", __doc__.split("\n\n")[0])
    parser.add_argument("--camera", required=True, help="the camera's name in the configuration")
    args = parser.parse_args(argv)
    config = start_service(args)
    camera = config.camera(args.camera)
    stop = stop_on_signals()
    capture = Capture(open_source(camera), capture_settings(config, camera))
    metrics = for_capture(capture, config.station)
    status = f"camera {camera.name}: {camera.source.kind}, {camera.trigger}"
    try:
        return operate(f"camera {camera.name}", capture.run, stop, metrics, camera.metrics_port, status)
    finally:
        capture.close()
        # frames still queued (a worker not up yet) go out within the sockets' linger, not lost
        zmq.Context.instance().term()


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
