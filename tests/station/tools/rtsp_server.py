"""A real RTSP server for tests (GStreamer's gst-rtsp-server through PyGObject): serves a moving test
pattern as Motion JPEG over RTP at rtsp://127.0.0.1:PORT/test until killed.

Usage: python tests/station/tools/rtsp_server.py PORT [WIDTH HEIGHT FPS]
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main(argv: list[str]) -> int:
    port, *shape = argv
    width, height, fps = (int(v) for v in shape) if shape else (320, 240, 10)
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
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
