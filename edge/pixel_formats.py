"""The GenICam pixel formats edge takes from GigE Vision cameras, by name: what the station
configuration validates against, without the camera driver (and OpenCV) it needs to decode them."""

from __future__ import annotations

BAYER_FORMATS = ("BayerRG8", "BayerGR8", "BayerBG8", "BayerGB8")
PIXEL_FORMATS = ("Mono8", "Mono16", "RGB8", *BAYER_FORMATS)
