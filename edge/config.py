"""The station's one configuration file: a typed tree, validated strictly before anything starts.

Every process of a station (capture per camera, worker, publisher, the `edge-run` supervisor, and
`edge-calibrate`) reads the same YAML file. Validation refuses an unknown key, a wrong type, a
duplicate key, an impossible value, a missing bank or weights file and an endpoint that cannot be
bound, and names the key's path and what was expected, so a plant engineer can fix the file from
the message alone. Secrets never need to sit in the file: `EDGE_<PATH>` environment variables
override string settings (for example `EDGE_SECURITY__PUBLISHER__SECRET_KEY`).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    model_validator,
)

from edge.engine.config import BACKBONES, ENSEMBLE_SEPARATOR, RUNTIME_SETTINGS, SETTINGS
from edge.engine.config import DEFAULTS as ENGINE
from edge.engine.input_geometry import GEOMETRY_MODES
from edge.errors import ConfigError, EdgeError
from edge.options import Flag
from edge.pixel_formats import PIXEL_FORMATS
from edge.protocol import NAME_MEANING, NAME_PATTERN
from edge.recipe import (
    DEFAULT_RECIPE,
    MAX_POLYGON_POINTS,
    MAX_RECIPES,
    MAX_REGIONS,
    SCALE_ASPECT_TOLERANCE,
    Recipe,
    Region,
    Registration,
    polygon_crosses_itself,
    rect_corners,
)
from edge.sockets import ENDPOINT_MEANING, ENDPOINT_PATTERN

STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
BROKER_PATTERN = r"^[A-Za-z0-9.\-]+(:\d{1,5})?$"
TOPIC_ROOT_PATTERN = r"^[^/+#\x00]+(/[^/+#\x00]+)*$"
OPCUA_URL_PATTERN = r"^opc\.tcp://[A-Za-z0-9.\-]+:\d{1,5}(/\S*)?$"
# station and camera names appear in topics and file names: the wire protocol's rule
PATTERN_MEANINGS = {
    NAME_PATTERN: NAME_MEANING,
    ENDPOINT_PATTERN: ENDPOINT_MEANING,
    BROKER_PATTERN: "HOST or HOST:PORT",
    TOPIC_ROOT_PATTERN: "topic levels joined by / (no + or #, no empty level)",
    OPCUA_URL_PATTERN: "an OPC UA endpoint such as opc.tcp://0.0.0.0:4840/edge/",
}
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Endpoint = Annotated[str, Field(pattern=ENDPOINT_PATTERN)]
Positive = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=0, le=65535)]
ENV_PREFIX = "EDGE_"
_BACKBONE = "(" + "|".join(map(re.escape, BACKBONES)) + ")"
BACKBONE_PATTERN = f"^{_BACKBONE}({re.escape(ENSEMBLE_SEPARATOR)}{_BACKBONE})*$"


@dataclass(frozen=True)
class MustExist:
    """Marks a path setting that `check_station` verifies before anything starts: it walks the
    schema for these, so a new file setting is checked where it is declared."""

    kind: str  # file, folder, or path (either)
    says: str  # what the problem line says after the path

    def problem(self, value: str) -> str | None:
        path = Path(value)
        try:
            found = {"file": path.is_file, "folder": path.is_dir, "path": path.exists}[self.kind]()
        except OSError as exc:  # a folder above it that this user may not enter
            return f"cannot be read ({exc.strerror or exc})"
        if not found:
            return self.says
        readable = os.R_OK | (os.X_OK if path.is_dir() else 0)
        return None if os.access(path, readable) else "cannot be read by this user (check its owner and mode)"


KeyFile = Annotated[str, MustExist("file", "is not a key file (edge-keys makes it)")]
KeyFolder = Annotated[str, MustExist("folder", "is not a folder of public keys")]
AFile = Annotated[str, MustExist("file", "is not a file")]
OptionalFile = Annotated[str | None, MustExist("file", "is not a file")]


def engine_setting(name: str, value_type: type = str) -> Any:
    """The station file's type for engine setting `name`: its choices (and old names that still
    read) or its bounds, with its help; declared once in edge/engine/config.py."""
    meaning = SETTINGS[name]
    if meaning.choices:
        return Annotated[Literal[meaning.accepted], Field(description=meaning.help)]
    bounds = Field(gt=meaning.above, ge=meaning.minimum, le=meaning.maximum, description=meaning.help)
    return Annotated[value_type, bounds]


Backbone = Annotated[str, Field(pattern=BACKBONE_PATTERN, description=SETTINGS["backbone"].help)]
if TYPE_CHECKING:  # to mypy the values' types; to pydantic, below, their choices and bounds too
    CoresetFraction = float
    Seed = int
    FitChunkRows = int
    ImageScore = str
    Search = str
    SearchPrecision = str
    Extractor = str
    ExtractorPrecision = str
    PixelFormat = str
    GeometryMode = str
else:
    CoresetFraction = engine_setting("coreset_fraction", float)
    Seed = engine_setting("seed", int)
    FitChunkRows = engine_setting("fit_chunk_rows", int)
    ImageScore = engine_setting("image_score")
    Search = engine_setting("search")
    SearchPrecision = engine_setting("search_precision")
    Extractor = engine_setting("extractor")
    ExtractorPrecision = engine_setting("extractor_precision")
    PixelFormat = Literal[PIXEL_FORMATS]
    GeometryMode = Literal[GEOMETRY_MODES]


def about(text: str) -> Any:
    """A setting's meaning, said once: the station file's reference and a bridge's --help read it."""
    return Field(description=text)


class _Strict(BaseModel):
    """No unknown keys, no coercion ("5" is not a number), immutable once loaded."""

    model_config = STRICT


class OpenCVSourceConfig(_Strict):
    """A USB/V4L2 camera (index or /dev path), a video file or stream URL, or a GStreamer pipeline.
    Cameras and streams are read by a thread that keeps only the newest frames (no buffering)."""

    kind: Literal["opencv"]
    uri: str | int
    width: Annotated[int, Field(ge=1, le=16_384)] | None = None  # asked of a USB camera; None: its own
    height: Annotated[int, Field(ge=1, le=16_384)] | None = None
    fps: Annotated[float, Field(gt=0, le=1000)] | None = None  # frames per second asked of a USB camera
    fourcc: Annotated[str, Field(min_length=4, max_length=4)] | None = None  # e.g. MJPG, YUYV
    rtsp_transport: Literal["tcp", "udp"] | None = None  # None: FFmpeg's choice (UDP first)


class AravisSourceConfig(_Strict):
    """A GigE Vision / USB3 Vision camera through Aravis (edge[gige] and system packages; see deploy/).
    Unset settings keep the camera's own values."""

    kind: Literal["aravis"]
    camera_id: str | None = None  # Aravis device id ("Basler-21234567") or IP address; None: the first
    # Bayer is demosaiced to RGB; Mono16 is scored by its top byte
    pixel_format: PixelFormat | None = None
    exposure_us: Annotated[float, Field(gt=0, le=10_000_000)] | None = None
    gain_db: Annotated[float, Field(ge=0, le=48)] | None = None
    frame_rate: Annotated[float, Field(gt=0, le=10_000)] | None = None  # free run: frames per second
    # x, y, width, height on the sensor
    region: Annotated[list[NonNegativeInt], Field(min_length=4, max_length=4)] | None = None
    packet_size: Annotated[int, Field(ge=576, le=16_000)] | None = None  # None: largest that gets through
    packet_resend: bool = True  # ask the camera again for lost packets
    packet_timeout_ms: Annotated[float, Field(gt=0, le=1000)] = 40.0  # before asking again
    frame_retention_ms: Annotated[float, Field(gt=0, le=10_000)] = 200.0  # then a frame is given up
    socket_buffer_bytes: Annotated[int, Field(ge=65_536, le=1 << 30)] | None = None  # None: one frame
    buffers: Annotated[int, Field(ge=2, le=256)] = 8


class FolderSourceConfig(_Strict):
    """Replay of a folder's images in name order."""

    kind: Literal["folder"]
    path: Annotated[str, MustExist("folder", "is not a folder")]
    rate_hz: Annotated[float, Field(ge=0)] = 0.0
    loop: bool = False


class SyntheticSourceConfig(_Strict):
    """Synthetic parts (demos, tests, commissioning without a camera)."""

    kind: Literal["synthetic"]
    size: Annotated[int, Field(ge=64, le=4096)] = 256
    defect_rate: Annotated[float, Field(ge=0, le=1)] = 0.2
    seed: int = 0
    count: Annotated[int, Field(ge=0)] | None = None  # None: endless
    rate_hz: Annotated[float, Field(ge=0)] = 0.0


SourceConfig = Annotated[
    OpenCVSourceConfig | AravisSourceConfig | FolderSourceConfig | SyntheticSourceConfig,
    Field(discriminator="kind"),
]
SOURCE_KINDS = ("opencv", "aravis", "folder", "synthetic")


class CameraConfig(_Strict):
    name: Name
    source: SourceConfig
    trigger: Literal["free_run", "triggered"] = "free_run"
    trigger_endpoint: Endpoint | None = None  # triggered: capture binds a PULL for trigger messages here
    deadline_ms: Positive | None = None  # triggered: a verdict is due this long after capture
    # triggered: longest from a trigger's arrival to its frame, then ERROR; None: 4 frame periods, ≥ 500 ms
    trigger_timeout_ms: Positive | None = None
    # free run: no frame for this long is a lost camera; away for this long, a camera is reported gone
    stale_after_s: Positive = 5.0
    metrics_port: Port | None = None  # Prometheus /metrics of this camera's capture process
    # millimetres per frame pixel at the part: defect areas in mm² and regions' min_area_mm2
    mm_per_px: Positive | None = None

    @model_validator(mode="after")
    def _trigger_has_endpoint(self) -> CameraConfig:
        if self.trigger == "triggered" and self.trigger_endpoint is None:
            raise ValueError("a triggered camera needs trigger_endpoint (where trigger messages arrive)")
        return self


class BankConfig(_Strict):
    # a bank version store (edge-calibrate's output folder) or one bank file
    path: Annotated[str, MustExist("path", "does not exist (run edge-calibrate to create a bank)")]
    threshold: Positive | None = None  # overrides the threshold stored in the bank


Point = Annotated[list[NonNegativeInt], Field(min_length=2, max_length=2)]


def _repeated(values: list[Any]) -> list[Any]:
    """The values that occur more than once, sorted (for a message naming them)."""
    return sorted({value for value in values if values.count(value) > 1})


class RegionConfig(_Strict):
    """A named part of the frame, drawn in the recipe's frame pixels: `inspect` (judged by its own
    rule) or `ignore` (never judged, its patches not searched), as a rectangle or a polygon."""

    name: Name
    mode: Literal["inspect", "ignore"] = "inspect"
    rect: Annotated[
        list[NonNegativeInt] | None,
        Field(min_length=4, max_length=4),
        about("[x, y, width, height] in frame pixels"),
    ] = None
    polygon: Annotated[
        list[Point] | None,
        Field(min_length=3, max_length=MAX_POLYGON_POINTS),
        about("[[x, y], ...] in frame pixels: at least 3 corners, not crossing itself"),
    ] = None
    mask: Annotated[
        str | None,
        MustExist("file", "is not a file"),
        about("a PNG of the recipe's frame size whose non-zero pixels are the region"),
    ] = None
    threshold: Annotated[Positive | None, about("this region's own threshold (default: the bank's)")] = None
    sensitivity: Annotated[
        Positive | None,
        about("the bank's threshold divided by this (2: twice as sensitive); instead of threshold"),
    ] = None
    min_area_px: Annotated[
        NonNegativeInt, about("a defect smaller than this many frame pixels does not reject")
    ] = 0
    min_area_mm2: Annotated[
        float | None, Field(ge=0), about("the same in mm² (needs the camera's mm_per_px)")
    ] = None

    @model_validator(mode="after")
    def _one_shape_one_threshold(self) -> RegionConfig:
        if [self.rect, self.polygon, self.mask].count(None) != 2:
            raise ValueError(f"region {self.name}: give exactly one of rect, polygon or mask")
        if self.rect is not None and (self.rect[2] == 0 or self.rect[3] == 0):
            raise ValueError(f"region {self.name}: rect width and height must be at least 1")
        if self.threshold is not None and self.sensitivity is not None:
            raise ValueError(f"region {self.name}: give threshold or sensitivity, not both")
        if self.mode == "ignore" and (
            self.threshold or self.sensitivity or self.min_area_px or self.min_area_mm2
        ):
            raise ValueError(
                f"region {self.name}: an ignore region has no rule (threshold, sensitivity, min area)"
            )
        if self.polygon is not None and polygon_crosses_itself(self.polygon):
            raise ValueError(f"region {self.name}: the polygon crosses itself")
        return self

    def corners(self) -> tuple[tuple[int, int], ...]:
        """The outline's corners in frame pixels (a rectangle's four; none for a mask)."""
        if self.rect is not None:
            return rect_corners(*self.rect)
        return tuple((x, y) for x, y in self.polygon or ())

    def spec(self) -> Region:
        rect = (self.rect[0], self.rect[1], self.rect[2], self.rect[3]) if self.rect is not None else None
        return Region(
            self.name, self.mode, self.corners(), rect, self.threshold, self.sensitivity,
            self.min_area_px, self.min_area_mm2, self.mask,
        )  # fmt: skip


class RegistrationConfig(_Strict):
    """Regions that follow the part (Keyence's position adjustment, Cognex's fixturing)."""

    reference: Annotated[AFile, about("the reference frame the regions are drawn on (an image file)")]
    max_turn_deg: Annotated[float, Field(ge=0, le=180), about("the largest turn of a part (degrees)")] = 15.0
    min_confidence: Annotated[
        float, Field(gt=0, lt=1), about("ECC's correlation below which a frame is not registered")
    ] = 0.7
    on_failure: Annotated[
        Literal["error", "nok"], about("a frame that cannot be registered: ERROR (default) or NOK")
    ] = "error"

    def spec(self) -> Registration:
        return Registration(self.reference, self.max_turn_deg, self.min_confidence, self.on_failure)


class FrameSize(_Strict):
    width: Annotated[int, Field(ge=1, le=65_535)]
    height: Annotated[int, Field(ge=1, le=65_535)]
    fit: Annotated[
        Literal["exact", "scale"],
        about(
            "exact: a frame of another size is refused (ERROR, reason frame); scale: the regions are "
            f"scaled to it, if its aspect ratio is within {100 * SCALE_ASPECT_TOLERANCE:.0f} % of this one's"
        ),
    ] = "exact"


class RecipeConfig(_Strict):
    """One product variant: its bank, and where and how strictly its frames are judged."""

    name: Annotated[Name, about("what a trigger's product names")]
    number: Annotated[int | None, Field(ge=1, le=65_535), about("the product number a PLC writes")] = None
    bank: BankConfig
    frame: Annotated[
        FrameSize | None, about("the frame size the regions are drawn for (needed with regions)")
    ] = None
    regions: Annotated[list[RegionConfig], Field(max_length=MAX_REGIONS)] = []
    registration: Annotated[RegistrationConfig | None, about("regions that follow the part")] = None

    @model_validator(mode="after")
    def _regions_fit(self) -> RecipeConfig:
        repeated = _repeated([region.name for region in self.regions])
        if repeated:
            raise ValueError(f"recipe {self.name}: region names must be unique; repeated: {repeated}")
        if self.registration is not None and not self.regions:
            raise ValueError(f"recipe {self.name}: registration moves regions: the recipe has none")
        if self.registration is not None and self.frame is not None and self.frame.fit == "scale":
            raise ValueError(
                f"recipe {self.name}: a registered recipe's frames are its reference's size: frame.fit exact"
            )
        if not self.regions:
            return self
        if self.frame is None:
            raise ValueError(
                f"recipe {self.name}: regions need frame (the width and height they are drawn for)"
            )
        for region in self.regions:
            outside = [(x, y) for x, y in region.corners() if x > self.frame.width or y > self.frame.height]
            if outside:
                raise ValueError(
                    f"recipe {self.name}: region {region.name} leaves the {self.frame.width}x"
                    f"{self.frame.height} frame at {list(outside[0])}"
                )
        return self

    def with_drawn(self, drawn: Any) -> RecipeConfig:
        """This recipe with the frame size and regions drawn on edge-view (a bank version's
        DRAWN_REGIONS) in place of the station file's, checked by the same rules; ConfigError
        (one line per problem) when they break one. None: the station file's."""
        if drawn is None:
            return self
        if not isinstance(drawn, dict):
            raise ConfigError(f"recipe {self.name}: drawn regions must be a mapping with frame and regions")
        raw = self.model_dump() | {"frame": drawn.get("frame"), "regions": drawn.get("regions")}
        try:
            return RecipeConfig.model_validate(raw)
        except ValidationError as exc:
            problems = [problem.removeprefix("(top level): ") for problem in describe_errors(exc)]
            raise ConfigError("; ".join(problems)) from None

    def spec(self) -> Recipe:
        """The recipe as the station's judging reads it."""
        frame_hw = None if self.frame is None else (self.frame.height, self.frame.width)
        registration = None if self.registration is None else self.registration.spec()
        scales = self.frame is not None and self.frame.fit == "scale"
        regions = tuple(region.spec() for region in self.regions)
        return Recipe(self.name, frame_hw, regions, registration, scales)


class EndpointsConfig(_Strict):
    frames: Endpoint  # worker (or, with a pool, the broker) binds (PULL); captures connect
    results: Endpoint  # publisher binds (PULL); workers and captures connect
    publish: Endpoint  # publisher binds (PUB); subscribers connect
    latest: Endpoint | None = None  # publisher binds (REP): the latest verdict per camera
    control: Endpoint | None = None  # worker (or the broker) binds (REP): bank reload
    # set: a worker pool; the broker binds this (ROUTER) and `frames`, and workers connect here
    workers: Endpoint | None = None


DEVICE_PATTERN = r"^(cpu|cuda(:\d+)?)$"


class WorkerConfig(_Strict):
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "cpu"
    # a pool (needs endpoints.workers): one worker per listed device, else `count` on `device`
    devices: Annotated[list[Annotated[str, Field(pattern=DEVICE_PATTERN)]], Field(min_length=1)] | None = None
    count: Annotated[int, Field(ge=1, le=64)] = 1
    search: Search = ENGINE.search
    search_precision: SearchPrecision = ENGINE.search_precision
    extractor: Extractor = ENGINE.extractor
    extractor_precision: ExtractorPrecision = ENGINE.extractor_precision
    # frames per micro-batch, and the extractor's batch (the engine's batch_size): one knob
    max_batch: Annotated[int, Field(ge=1, le=256)] = ENGINE.batch_size
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 5.0
    torch_threads: Annotated[int, Field(ge=1, le=256)] | None = None  # None: torch's default
    metrics_port: Port | None = None  # Prometheus /metrics


class BrokerConfig(_Strict):
    """The worker pool's broker (edge-broker; only with endpoints.workers)."""

    worker_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0  # a worker silent this long is dead
    metrics_port: Port | None = None  # Prometheus /metrics


class PublisherConfig(_Strict):
    heartbeat_s: Positive = 1.0
    default_deadline_ms: Positive = 5000.0  # for triggered frames that carry no deadline
    # longest a verdict waits for an earlier part's of its camera (capture order); with a pool,
    # above broker.worker_timeout_s keeps the order when a worker dies (its parts are resent)
    reorder_window_ms: Annotated[float, Field(ge=0, le=60_000)] = 1000.0
    # after a (re)start, only heartbeats go out this long, so subscribers reconnect before verdicts do
    startup_hold_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    # the ledger's journal (a restarted publisher takes over the parts it awaited); None: in
    # $STATE_DIRECTORY under systemd, in edge-run's run folder under edge-run
    journal: str | None = None
    # every verdict is kept this long on the station's disk, for bridges and clients that missed it
    # (about 0.5 kB each: an hour at 10 parts/s is about 20 MB); at most 30 days
    replay_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 3600.0
    # where they are kept (SQLite); None: beside the journal, or in memory where there is none
    replay_file: str | None = None
    metrics_port: Port | None = None  # Prometheus /metrics


class RecentFramesConfig(_Strict):
    """The frames of recent NOK parts (and a sample of OK ones), kept on the station's disk for
    edge-view's overlays and for clearing false rejects (edge/recent.py). Off unless configured."""

    path: str  # a folder on the station, shared by its workers; edge-view --recent reads it
    max_frames: Annotated[int, Field(ge=1, le=20_000)] = 500  # then the oldest go
    max_mb: Annotated[float, Field(gt=0)] = 2048.0  # then the oldest go
    ok_every: Annotated[int, Field(ge=0)] = 0  # also every n-th OK part per camera; 0: rejects only


class SupervisorConfig(_Strict):
    restart_burst: Annotated[int, Field(ge=0)] = 5  # restarts of one process allowed per interval
    restart_interval_s: Positive = 60.0
    drain_timeout_s: Positive = 10.0  # per process on SIGTERM, then SIGKILL


class CurveServerConfig(_Strict):
    secret_key: KeyFile  # this server's .key_secret (edge-keys)
    allowed_clients: KeyFolder  # folder of the public .key files of the clients allowed to connect


class CurveClientConfig(_Strict):
    secret_key: Annotated[KeyFile, Flag("--client-key"), about("this client's .key_secret (edge-keys)")]
    server_key: Annotated[KeyFile, Flag("--server-key"), about("the server's public .key")]


class FramesSecurityConfig(_Strict):
    """capture → worker across hosts: the worker is the CURVE server, each capture a client."""

    worker: CurveServerConfig
    capture: CurveClientConfig


class WorkersSecurityConfig(_Strict):
    """broker → pool workers across hosts: the broker is the CURVE server, each worker a client."""

    broker: CurveServerConfig
    worker: CurveClientConfig


class SecurityConfig(_Strict):
    publisher: CurveServerConfig | None = None  # CURVE and an allow-list on the PUB and latest endpoints
    frames: FramesSecurityConfig | None = None  # (with a pool, `frames.worker` secures the broker's PULL)
    workers: WorkersSecurityConfig | None = None


class BridgeConfig(_Strict):
    """What every bridge has (edge/bridges/base.py); each bridge's section adds its own. Its
    options (edge-<name>-bridge --help) are derived from these fields."""

    cameras: Annotated[
        list[Name] | None, Flag("--camera"), about("only these cameras (repeat the option); default: all")
    ] = None
    alive_timeout_s: Annotated[
        float,
        Field(gt=0),
        Flag("--alive-timeout"),
        about("seconds without heartbeats: the station is not alive"),
    ] = 3.0
    state: Annotated[
        str | None,
        about("positions file: a restarted bridge resumes where it stopped (needs the station's "
              "endpoints.latest); default under systemd $STATE_DIRECTORY/<bridge>-positions.json"),
    ] = None  # fmt: skip
    curve: Annotated[
        CurveClientConfig | None, about("CURVE keys toward the publisher (with security.publisher)")
    ] = None
    metrics_port: Annotated[Port | None, about("serve Prometheus /metrics on this port")] = None

    # (a module the bridge needs, the extra that installs it): edge-run says so rather than fail
    needs: ClassVar[tuple[str, str]]


class MqttBridgeConfig(BridgeConfig):
    """edge-mqtt-bridge (edge/bridges/mqtt.py): this station's verdicts onto the site's MQTT broker."""

    needs = ("paho.mqtt.client", "mqtt")

    broker: Annotated[
        str, Field(pattern=BROKER_PATTERN), about("MQTT broker HOST[:PORT] (1883; 8883 with TLS)")
    ]
    topic_root: Annotated[
        str, Field(pattern=TOPIC_ROOT_PATTERN), about("topic prefix, e.g. acme/plant1/line3")
    ] = "edge"
    client_id: Annotated[
        str | None,
        about("MQTT client id (default edge-<station>-<root>); fixed: the broker keeps its session"),
    ] = None
    username: Annotated[str | None, about("broker user name")] = None
    password_file: Annotated[OptionalFile, about("a file holding the broker password")] = None
    tls_ca: Annotated[OptionalFile, about("TLS: the CA bundle that signed the broker's certificate")] = None
    tls_cert: Annotated[OptionalFile, about("TLS: this bridge's certificate (with tls_key)")] = None
    tls_key: Annotated[OptionalFile, about("TLS: this bridge's private key")] = None
    buffer: Annotated[int, Field(ge=1, le=1_000_000), about("verdicts kept while the broker is away")] = (
        10_000
    )
    masks: Annotated[bool, about("NOK masks as PNG under <root>/<station>/<camera>/mask/<frame id>")] = False

    @model_validator(mode="after")
    def _tls_pairs(self) -> MqttBridgeConfig:
        if (self.tls_cert is None) != (self.tls_key is None) or (self.tls_cert and not self.tls_ca):
            raise ValueError("a client certificate needs tls_cert, tls_key and tls_ca")
        return self


class OpcUaBridgeConfig(BridgeConfig):
    """edge-opcua-bridge (edge/bridges/opcua.py): this station's results in an OPC UA server."""

    needs = ("asyncua", "opcua")

    endpoint_url: Annotated[
        str, Field(pattern=OPCUA_URL_PATTERN), Flag("--endpoint"), about("the OPC UA endpoint URL")
    ] = "opc.tcp://0.0.0.0:4840/edge/"
    certificate: Annotated[AFile, about("the server's certificate (DER; --make-certificate writes a pair)")]
    private_key: Annotated[AFile, about("the server's private key (PEM)")]
    trust_dir: Annotated[
        str,
        MustExist("folder", "is not a folder of trusted client certificates"),
        Flag("--trust"),
        about("a folder of trusted client certificates; others are refused"),
    ]
    users_file: Annotated[
        OptionalFile, Flag("--users"), about("users file: logins need a user name and password (--add-user)")
    ] = None
    allow_anonymous: Annotated[bool, about("also an unsecured endpoint and anonymous login")] = False
    select_recipes: Annotated[
        bool, about("offer SelectRecipe: a client may choose a camera's recipe (else the methods only read)")
    ] = False
    job_camera: Annotated[
        Name | None,
        about("offer StartSingleJob: a client triggers this triggered camera's parts (needs --config)"),
    ] = None


MODBUS_OFFSETS = 28  # the registers of a verdict, the alive word and the handshake (edge/bridges/modbus.py)


class ModbusBridgeConfig(BridgeConfig):
    """edge-modbus-bridge (edge/bridges/modbus.py): the latest verdict in a PLC's holding registers."""

    needs = ("pymodbus", "plc")

    plc: Annotated[str, Field(pattern=BROKER_PATTERN), about("PLC address HOST[:PORT] (port 502)")]
    device_id: Annotated[int, Field(ge=0, le=255), about("Modbus unit/device id")] = 1
    base: Annotated[int, Field(ge=0, le=65536 - MODBUS_OFFSETS), about("first holding register")] = 0
    handshake_camera: Annotated[
        Name | None,
        Flag("--handshake-camera"),
        about(
            "the triggered camera whose parts the PLC triggers by the handshake registers (needs --config)"
        ),
    ] = None


class BridgesConfig(_Strict):
    """Plant protocols, each a process of its own (edge-run runs it; a systemd unit where configured)."""

    mqtt: MqttBridgeConfig | None = None
    opcua: OpcUaBridgeConfig | None = None
    modbus: ModbusBridgeConfig | None = None

    def configured(self) -> dict[str, BridgeConfig]:
        """Each configured bridge's section, by its name."""
        sections = {name: getattr(self, name) for name in type(self).model_fields}
        return {name: section for name, section in sections.items() if section is not None}


TARGET_FRR_MEANING = "target false-reject rate on good parts"


class CalibrationConfig(_Strict):
    """How edge-calibrate builds this station's banks (the recipe --add reuses)."""

    frames: Annotated[int, Field(ge=1, description="good frames to collect (live) or read (folder)")] = 200
    backbone: Backbone = ENGINE.backbone
    coreset_fraction: CoresetFraction = ENGINE.coreset_fraction
    target_frr: Annotated[float, Field(gt=0, lt=0.5, description=TARGET_FRR_MEANING)] = 0.01
    margin: Annotated[float, Field(ge=0, le=1, description="raise the threshold by this share")] = 0.0
    folds: Annotated[int, Field(ge=2, le=20, description="held-out folds")] = 5
    seed: Seed = ENGINE.seed
    fit_chunk_rows: FitChunkRows = ENGINE.fit_chunk_rows
    geometry: Annotated[
        GeometryMode,
        Field(description="how frames become network input (auto: the whole frame at its own resolution, "
              "within bounds; docs/engine.md)"),
    ] = ENGINE.geometry.mode  # fmt: skip
    input_size: Annotated[
        int | None, Field(ge=32, le=1024, description="the geometry's size in pixels (default: its own)")
    ] = None
    image_score: ImageScore = ENGINE.image_score
    # recipes written before `geometry` had this
    full_frame: Annotated[bool, Field(description="the same as geometry full_frame at 224 px")] = False


# engine settings the station file sets: the recipe's are fixed when a bank is built, the worker's
# chosen when it loads one
RECIPE_ENGINE_SETTINGS = tuple(n for n in CalibrationConfig.model_fields if n in SETTINGS and n != "geometry")
WORKER_ENGINE_SETTINGS = tuple(name for name in WorkerConfig.model_fields if name in RUNTIME_SETTINGS)


class StationConfig(_Strict):
    station: Name
    bank: Annotated[BankConfig | None, about("the station's one bank (or give recipes)")] = None
    # one per product variant; a trigger's product names one, else the first judges
    recipes: Annotated[list[RecipeConfig], Field(max_length=MAX_RECIPES)] = []
    endpoints: EndpointsConfig
    cameras: Annotated[list[CameraConfig], Field(min_length=1, max_length=256)]  # a heartbeat names each
    # WideResNet50 weights file; efficientnet_lite0 ships with edge
    weights: Annotated[str | None, MustExist("file", "is not a file (the WideResNet50 weights file)")] = None
    worker: WorkerConfig = WorkerConfig()
    broker: BrokerConfig = BrokerConfig()
    publisher: PublisherConfig = PublisherConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    security: SecurityConfig = SecurityConfig()
    recent_frames: RecentFramesConfig | None = None
    bridges: BridgesConfig = BridgesConfig()

    @model_validator(mode="after")
    def _unique_cameras(self) -> StationConfig:
        duplicates = _repeated([camera.name for camera in self.cameras])
        if duplicates:
            raise ValueError(f"camera names must be unique; repeated: {duplicates}")
        return self

    @model_validator(mode="after")
    def _bank_or_recipes(self) -> StationConfig:
        if (self.bank is None) == (not self.recipes):
            raise ValueError("give bank (one product) or recipes (one per product), not both, not neither")
        for key in ("name", "number"):
            repeated = _repeated([getattr(r, key) for r in self.recipes if getattr(r, key) is not None])
            if repeated:
                raise ValueError(f"recipe {key}s must be unique; repeated: {repeated}")
        unscaled = self._unscaled(self.recipes)
        if unscaled:
            raise ValueError(unscaled[0])
        return self

    def _unscaled(self, recipes: list[RecipeConfig]) -> list[str]:
        """Regions sized in mm² on a station where some camera has no scale."""
        if all(camera.mm_per_px is not None for camera in self.cameras):
            return []
        return [
            f"recipe {recipe.name}: region {region.name} sets min_area_mm2, so every camera needs mm_per_px"
            for recipe in recipes
            for region in recipe.regions
            if region.min_area_mm2 is not None
        ]

    def with_drawn(self, recipe: RecipeConfig, drawn: Any) -> RecipeConfig:
        """`recipe` with regions drawn on edge-view (a bank version's DRAWN_REGIONS), checked as
        the station file's are; ConfigError with one line per problem."""
        changed = recipe.with_drawn(drawn)
        unscaled = self._unscaled([changed])
        if unscaled:
            raise ConfigError("; ".join(unscaled))
        return changed

    def active_recipe(self, recipe: RecipeConfig) -> RecipeConfig:
        """`recipe` as its bank store's active version has it: with the regions drawn on
        edge-view where that version carries some (ConfigError when they no longer fit)."""
        from edge.bankstore import active_drawn_regions

        return self.with_drawn(recipe, active_drawn_regions(recipe.bank.path))

    @model_validator(mode="after")
    def _bridges_trigger_triggered_cameras(self) -> StationConfig:
        modbus, opcua = self.bridges.modbus, self.bridges.opcua
        triggered = [c.name for c in self.cameras if c.trigger == "triggered"]
        for key, name in (
            ("modbus.handshake_camera", modbus.handshake_camera if modbus is not None else None),
            ("opcua.job_camera", opcua.job_camera if opcua is not None else None),
        ):
            if name is not None and name not in triggered:
                raise ValueError(f"bridges.{key}: {name} is not a triggered camera of this station")
        return self

    @property
    def mm_per_px(self) -> dict[str, float]:
        """Each camera's scale, where it has one (defects' areas in mm²)."""
        return {camera.name: camera.mm_per_px for camera in self.cameras if camera.mm_per_px is not None}

    @property
    def recipe_list(self) -> list[RecipeConfig]:
        """The station's recipes, first the default; `bank` alone is the one recipe `default`."""
        if self.recipes:
            return list(self.recipes)
        assert self.bank is not None
        return [RecipeConfig(name=DEFAULT_RECIPE, bank=self.bank)]

    def recipe(self, name: str | None = None) -> RecipeConfig:
        """The recipe of this name (None: the first, the default)."""
        recipes = self.recipe_list
        if name is None:
            return recipes[0]
        for recipe in recipes:
            if recipe.name == name:
                return recipe
        names = [recipe.name for recipe in recipes]
        raise ConfigError(f"no recipe named {name!r} in the configuration (recipes: {names})")

    @model_validator(mode="after")
    def _pool_has_endpoint(self) -> StationConfig:
        if len(self.worker_devices) > 1 and self.endpoints.workers is None:
            raise ValueError(
                "several workers (worker.count or worker.devices) need endpoints.workers, "
                "where the broker hands them frames"
            )
        return self

    @property
    def worker_devices(self) -> list[str]:
        """The device of each worker slot this station runs (one: no pool unless endpoints.workers)."""
        return list(self.worker.devices or [self.worker.device] * self.worker.count)

    @property
    def pooled(self) -> bool:
        return self.endpoints.workers is not None

    def camera(self, name: str) -> CameraConfig:
        for camera in self.cameras:
            if camera.name == name:
                return camera
        raise ConfigError(f"no camera named {name!r} in the configuration (cameras: {self.camera_names})")

    @property
    def camera_names(self) -> list[str]:
        return [camera.name for camera in self.cameras]


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML (no tags that build objects) that also refuses a key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _key_path(location: tuple) -> str:
    """('cameras', 0, 'source', 'folder', 'rate_hz') → 'cameras[0].source.rate_hz'."""
    text = ""
    for index, part in enumerate(location):
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in SOURCE_KINDS and index > 0 and location[index - 1] == "source":
            continue  # the union's tag, not a key
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _describe(error: Any) -> str:
    kind, given = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag")
        return f"unknown source kind {tag!r}; expected one of {', '.join(SOURCE_KINDS)}"
    if kind == "string_pattern_mismatch":
        expected = PATTERN_MEANINGS.get(error.get("ctx", {}).get("pattern"), "a value of the documented form")
        return f"expected {expected}, got {given!r}"
    if kind == "union_tag_not_found":
        return f"needs 'kind': one of {', '.join(SOURCE_KINDS)}"
    message = error["msg"].removeprefix("Value error, ")
    if kind.endswith("_type") or kind == "literal_error":
        message += f" (got {given!r})"
    return message


def describe_errors(error: ValidationError) -> list[str]:
    """One line per problem: the key's path and what was expected."""
    return [f"{_key_path(e['loc'])}: {_describe(e)}" for e in error.errors()]


def _apply_environment(raw: dict, environ: dict[str, str]) -> None:
    """EDGE_A__B=value sets raw['a']['b'] = value (strings only: secrets, paths, endpoints)."""
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = raw
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name} names no configuration section")
        node[path[-1]] = value


def parse_config(text: str, origin: str = "<config>", environ: dict[str, str] | None = None) -> StationConfig:
    """Validate YAML text; every defect is a ConfigError naming the key's path."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no tags that build objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{origin}: not valid YAML: {where}{problem}") from None
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin}: expected a mapping of settings at the top level, got {type(raw).__name__}"
        )
    _apply_environment(raw, dict(os.environ) if environ is None else environ)
    try:
        return StationConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [f"  {p}" for p in describe_errors(exc)]
        raise ConfigError(f"{origin}: {len(problems)} problem(s):\n" + "\n".join(problems)) from None


def load_config(path: str | os.PathLike, environ: dict[str, str] | None = None) -> StationConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc}") from None
    return parse_config(text, str(path), environ)


def bound_endpoints(config: StationConfig) -> dict[str, str]:
    """Every endpoint a station binds, by its key path."""
    endpoints = {f"endpoints.{key}": value for key, value in config.endpoints.model_dump().items() if value}
    for index, camera in enumerate(config.cameras):
        if camera.trigger_endpoint:
            endpoints[f"cameras[{index}].trigger_endpoint"] = camera.trigger_endpoint
    return endpoints


def _bindable(endpoint: str) -> str | None:
    """None if the endpoint can be bound now, else why not. An ipc socket file the probe made is
    removed again: left behind (by root, say), it would read as "in use" to the service user."""
    import zmq

    ipc_path = Path(endpoint.removeprefix("ipc://")) if endpoint.startswith("ipc://") else None
    existed = ipc_path is not None and ipc_path.exists()
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    try:
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind(endpoint)
        return None
    except zmq.ZMQError as exc:
        return f"{exc}: another program holds it" if exc.errno == errno.EADDRINUSE else str(exc)
    finally:
        socket.close(linger=0)
        context.term()
        if ipc_path is not None and not existed:
            ipc_path.unlink(missing_ok=True)


def _bank_problems(config: StationConfig) -> list[str]:
    """A bank store with no active version (the worker would have nothing to score with), and
    regions that leave nothing to judge."""
    from edge.bankstore import BankStore

    problems = []
    for index, recipe in enumerate(config.recipe_list):
        key = "bank.path" if not config.recipes else f"recipes[{index}].bank.path"
        path = Path(recipe.bank.path)
        if not path.is_dir():
            continue
        try:
            active = BankStore(path).active_version()
        except EdgeError as exc:
            problems.append(f"{key}: {exc}")
            continue
        if active is None:
            problems.append(f"{key}: {path} holds no active bank yet: run edge-calibrate (docs: cold start)")
    return problems


def region_problems(config: StationConfig) -> list[str]:
    """Regions the schema accepts that leave an inspect region, or the frame, with nothing to judge
    (found by drawing them; needs OpenCV, which the station has)."""
    from edge.recipe import region_problems as drawn_problems

    problems = []
    for recipe in config.recipe_list:
        try:
            recipe = config.active_recipe(recipe)
        except EdgeError as exc:  # drawn regions that no longer fit the station file
            problems.append(f"recipe {recipe.name}: the active bank version's drawn regions: {exc}")
            continue
        problems += drawn_problems(recipe.spec())
    return problems


def path_problems(section: BaseModel, prefix: str = "") -> list[str]:
    """Every MustExist setting of `section` and its sub-sections whose path is not there."""
    problems = []
    for name, info in type(section).model_fields.items():
        value, key = getattr(section, name), prefix + name
        marker = next((m for m in info.metadata if isinstance(m, MustExist)), None)
        if marker is not None:
            problem = None if value is None else marker.problem(value)
            problems += [f"{key}: {value} {problem}"] if problem else []
        elif isinstance(value, BaseModel):
            problems += path_problems(value, key + ".")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    problems += path_problems(item, f"{key}[{index}].")
    return problems


def bridge_problems(config: StationConfig) -> list[str]:
    """Files the bridges read that are not there, and a bridge with no way to the publisher."""
    problems = path_problems(config.bridges, "bridges.")
    return problems + _bridge_link_problems(config)


def _bridge_link_problems(config: StationConfig) -> list[str]:
    """A bridge without CURVE keys where the publisher takes only CURVE clients."""
    problems = []
    for name, bridge in config.bridges.configured().items():
        if config.security.publisher is not None and bridge.curve is None:
            problems.append(
                f"bridges.{name}.curve: the publisher uses CURVE (security.publisher): the bridge needs keys"
            )
    return problems


def camera_warnings(config: StationConfig) -> list[str]:
    """OpenCV cameras that will not open now: a device node that is not there, an RTSP URL its
    server refuses. Not fatal (edge-run --check-config and edge-run say the same): the station
    starts, reports the camera as reconnecting and answers its triggered parts ERROR until it opens."""
    from edge.camera_probe import stream_problem

    warnings = []
    for index, camera in enumerate(config.cameras):
        if isinstance(camera.source, OpenCVSourceConfig):
            problem = stream_problem(camera.source.uri)
            if problem:
                warnings.append(f"cameras[{index}].source.uri ({camera.name}): {problem}")
    return warnings


def _is_bank_path(problem: str) -> bool:
    """A problem line about a bank store's path (`bank.path` or a recipe's)."""
    key = problem.split(":", 1)[0]
    return key == "bank.path" or (key.startswith("recipes[") and key.endswith("].bank.path"))


def check_station(config: StationConfig, bind: bool = False, bank: bool = True) -> None:
    """What the schema cannot see: files that must exist, endpoints that must differ; with `bind`
    (edge-run and its --check-config), also endpoints bindable and a bank to score with. `bank`
    False: a process that needs none (capture and publisher run at cold start, before there is one)."""
    problems = [p for p in path_problems(config) if bank or not _is_bank_path(p)]
    problems += _bridge_link_problems(config)
    endpoints = bound_endpoints(config)
    by_address: dict[str, list[str]] = {}
    for key, address in endpoints.items():
        by_address.setdefault(address, []).append(key)
    for address, keys in by_address.items():
        if len(keys) > 1:
            problems.append(f"{', '.join(keys)}: the same endpoint {address} is bound twice")
    if bind:  # what exists only on the station itself, at run time
        problems += _bank_problems(config) + region_problems(config)
    if bind and not problems:
        for key, address in endpoints.items():
            reason = _bindable(address)
            if reason:
                problems.append(f"{key}: {address} cannot be bound ({reason})")
    if problems:
        raise ConfigError(f"{len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))
