"""Every console command's entry point. Each imports its module only when run, so that a command
of an extra the base install leaves out (`pip install edge` has no torch) says which extra to
install instead of failing with an import traceback."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from edge.cli_support import missing_extra, setup_logging


def _command(module: str, extra: str | None = None) -> Callable[[], int]:
    def main() -> int:
        try:
            target = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            setup_logging()
            return missing_extra(exc, extra)
        return target.main(sys.argv[1:])

    main.__doc__ = f"`{module}.main`, imported when run."
    return main


eval_main = _command("edge.eval.cli", "eval")
synth = _command("edge.eval.synthetic", "eval")
demo = _command("edge.demo", "station")
tail = _command("edge.tail")
trigger = _command("edge.trigger")
view = _command("edge.view.cli", "view")
run = _command("edge.services.supervisor", "station")
calibrate = _command("edge.calibration.cli", "station")
what_if = _command("edge.services.whatif", "station")
keys = _command("edge.keys")
modbus_bridge = _command("edge.bridges.modbus", "plc")
mqtt_bridge = _command("edge.bridges.mqtt", "mqtt")
opcua_bridge = _command("edge.bridges.opcua", "opcua")
capture = _command("edge.services.capture", "station")
worker = _command("edge.services.worker", "station")
broker = _command("edge.services.broker", "station")
publisher = _command("edge.services.publisher", "station")
