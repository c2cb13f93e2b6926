"""A real RTSP server for tests (GStreamer's gst-rtsp-server through PyGObject): serves Motion JPEG
over RTP at rtsp://127.0.0.1:PORT/test until killed: a moving test pattern, or with `--numbered
LOG` greyscale frames that show their own number (16 bits as black and white squares across the
middle, see `frame_number`), each number written to LOG with the monotonic time it was pushed,
so that a test knows when every frame it receives left the server.

Usage: python tests/station/tools/rtsp_server.py PORT [WIDTH HEIGHT FPS] [--numbered LOG]
"""

from __future__ import annotations

import sys
import time

import gi
import numpy as np

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

BITS, SQUARE, TOP = 16, 20, 100  # the number's squares: 16 of 20 x 20 pixels from x = 0, y = TOP


def numbered_frame(number: int, width: int, height: int) -> np.ndarray:
    pixels = np.full((height, width), 128, np.uint8)
    for bit in range(BITS):
        value = 255 if number >> bit & 1 else 0
        pixels[TOP : TOP + SQUARE, bit * SQUARE : (bit + 1) * SQUARE] = value
    return pixels


def frame_number(pixels: np.ndarray) -> int:
    """The number a (decoded, possibly colour) frame shows."""
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    centre = TOP + SQUARE // 2
    return sum(1 << bit for bit in range(BITS) if grey[centre, bit * SQUARE + SQUARE // 2] > 128)


def _serve_numbered(factory, width: int, height: int, fps: int, log_path: str) -> None:
    factory.set_launch(
        f"( appsrc name=src is-live=true format=time do-timestamp=true caps=video/x-raw,format=GRAY8,"
        f"width={width},height={height},framerate={fps}/1 ! videoconvert ! video/x-raw,format=I420 ! "
        "jpegenc ! rtpjpegpay name=pay0 pt=96 )"
    )
    log = open(log_path, "a", buffering=1)  # noqa: SIM115  (open while the server runs)
    count = iter(range(1 << BITS))

    def configure(_factory, media) -> None:
        source = media.get_element().get_by_name_recurse_up("src")

        def push() -> bool:
            number = next(count)
            data = numbered_frame(number, width, height).tobytes()
            log.write(f"{number} {time.monotonic_ns()}\n")
            return source.emit("push-buffer", Gst.Buffer.new_wrapped(data)) == Gst.FlowReturn.OK

        GLib.timeout_add(1000 // fps, push)

    factory.connect("media-configure", configure)


def main(argv: list[str]) -> int:
    log_path = None
    if "--numbered" in argv:
        at = argv.index("--numbered")
        log_path, argv = argv[at + 1], argv[:at] + argv[at + 2 :]
    port, *shape = argv
    width, height, fps = (int(v) for v in shape) if shape else (320, 240, 10)
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    if log_path:
        _serve_numbered(factory, width, height, fps, log_path)
    else:
        factory.set_launch(  # RTP's JPEG payload carries 4:2:0 or 4:2:2 only
            f"( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={width},"
            f"height={height},framerate={fps}/1 ! jpegenc ! rtpjpegpay name=pay0 pt=96 )"
        )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    server.attach(None)
    print(f"serving rtsp://127.0.0.1:{port}/test", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
