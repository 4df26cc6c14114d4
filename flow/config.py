"""Build and board configuration: frozen dataclasses, YAML/JSON, unknown keys are errors.

Precedence is one way: dataclass defaults -> ``--config FILE.yaml`` -> CLI flags
(:func:`resolve_build_config`). The resolved config is written into the output directory
(``build_config.yaml``), as timm's ``train.py`` writes ``args.yaml``. Board files (package
data in :mod:`flow.boards`, or a YAML path) keep FINN's vocabulary (``board``, ``fpga_part``,
``synth_clk_period_ns``, ``shell_flow_type``) plus the device capacity and the budget fraction.
"""

from __future__ import annotations

import dataclasses
import typing
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum
from importlib.resources import as_file
from pathlib import Path

import yaml

from flow.boards import board_file, list_boards
from flow.env.finn import MVAU_WWIDTH_MAX
from sibnn_base.errors import ConfigError
from sibnn_base.typed import check_keys, coerce, load_mapping, to_dict

RESOURCES = ("LUT", "FF", "BRAM_18K", "URAM", "DSP")
"""The device resources a board file's ``capacity`` lists (FINN's resource names)."""
BUDGETED = ("LUT", "BRAM_18K", "URAM", "DSP")
"""Resources the folding keeps within budget (FINN's estimates do not model FF)."""
PLOTTED_RESOURCES = ("LUT", "BRAM_18K", "DSP")
"""The budgeted resources the studies tabulate against budget and capacity and plot, one bar
each (URAM is listed beside them)."""

DEFAULT_MODEL = "si_h_resnet_w1a1_mbh"
"""The model a build without ``--model``/``--onnx`` compiles (the shipped student)."""

DEFAULT_BOARD = "pynq-z2"
"""The board a build without ``--board`` targets."""

SIM_INPUTS_DEFAULT = 8
"""How many verification inputs ``--sim`` runs through the generated code unless ``sim_inputs``
says otherwise."""


class FrontEnd(str, Enum):
    """How a build turns QONNX into FINN's streamlined graph."""

    AUTO = "auto"
    """``exact`` where sibnn's integer IR covers the graph, else ``finn``."""
    EXACT = "exact"
    """sibnn's integer IR lowered to FINN ops (``flow.hw.lower``): exact by construction."""
    FINN = "finn"
    """FINN's ``ConvertQONNXtoFINN`` and streamlining with our rewrites (any supported graph)."""


class SimMode(str, Enum):
    """Which generated code a build runs after ``hw_codegen`` (``flow.sim.simulate``)."""

    NONE = "none"
    """No code simulation: after specialisation only FINN's python models of the layers run."""
    CPPSIM = "cppsim"
    """Every ``*_hls`` node as its generated C++ compiled with g++ (``flow.sim.cppsim``)."""
    RTLSIM = "rtlsim"
    """Every ``*_rtl`` node as its generated RTL compiled with Verilator (``flow.sim.rtlsim``)."""
    STITCHED = "stitched"
    """The whole accelerator after FINN's FIFO/DWC insertion, cycle by cycle on several frames:
    RTL nodes in Verilator, HLS nodes as cycle models; sizes the FIFOs (``flow.sim.stitched``)."""
    ALL = "all"
    """cppsim + rtlsim + stitched."""

    @property
    def kinds(self) -> tuple[str, ...]:
        """The simulations this mode runs: ``cppsim``, ``rtlsim``, ``stitched`` (in that order)."""
        if self is SimMode.ALL:
            return tuple(m.value for m in SimMode if m not in (SimMode.NONE, SimMode.ALL))
        return () if self is SimMode.NONE else (self.value,)


SIM_OF_SUFFIX = {"_hls": SimMode.CPPSIM.value, "_rtl": SimMode.RTLSIM.value}
"""The node-by-node simulation of a specialised node, by its op type's suffix (``MVAU_hls`` runs
in cppsim, ``MVAU_rtl`` in rtlsim)."""


class FifoSizing(str, Enum):
    """Who sizes the FIFOs of the stitched design."""

    SIM = "sim"
    """sibnn's stitched simulation (``--sim stitched``): ``report/fifo_depths.json``, which the
    Vivado steps apply with ``auto_fifo_depths: false``."""
    FINN = "finn"
    """FINN's own sizing inside ``set_fifo_depths`` (needs Vivado's simulator)."""


class ShellFlow(str, Enum):
    """FINN's ``shell_flow_type``."""

    VIVADO_ZYNQ = "vivado_zynq"
    VITIS_ALVEO = "vitis_alveo"


@dataclass(frozen=True)
class BoardConfig:
    """One FPGA board (a file in :mod:`flow.boards`, or a board YAML the user passes)."""

    name: str
    """Our board id, the file stem (``pynq-z2``)."""
    board: str
    """FINN's board name (``Pynq-Z2``), as in ``DataflowBuildConfig.board``."""
    fpga_part: str
    """The Xilinx part (``xc7z020clg400-1``)."""
    synth_clk_period_ns: float
    """Target clock period in ns (10.0 = 100 MHz)."""
    shell_flow_type: ShellFlow
    """FINN's shell flow for the bitfile."""
    capacity: dict[str, int]
    """Device resources: LUT, FF, BRAM_18K, URAM, DSP."""
    budget_fraction: float = 0.8
    """Fraction of each resource the accelerator may use (folding target)."""
    capacity_source: str = ""
    """Where the capacity numbers come from."""

    @property
    def budget(self) -> dict[str, int]:
        """Per-resource budget: ``floor(capacity * budget_fraction)``."""
        return {k: int(self.capacity[k] * self.budget_fraction) for k in BUDGETED}


@dataclass(frozen=True)
class BuildConfig:
    """Everything one ``flow/build.py`` run needs (FINN's ``DataflowBuildConfig`` is the model)."""

    board: str = DEFAULT_BOARD
    """Board id: a file ``flow/boards/<board>.yaml`` (or the path of a board YAML)."""
    model: str | None = None
    """Registry model name; None with no ``onnx`` means the default model."""
    onnx: str | None = None
    """A QONNX file to build instead of a registry model."""
    checkpoint: str | None = None
    """Checkpoint for ``model``; None uses the shipped one when it exists, else seeded weights."""
    strict_checkpoint: bool = False
    """Refuse a ``checkpoint`` without a payload sha256 (otherwise: a warning in build.log)."""
    output_dir: str | None = None
    """Output directory; None means ``build/<model>_<board>``."""
    folding: str | None = None
    """A FINN-schema folding JSON to apply instead of automatic folding."""
    start_step: str | None = None
    """First step to run (needs the previous step's intermediate model in the output dir)."""
    stop_step: str | None = None
    """Last step to run."""
    front_end: FrontEnd = FrontEnd.AUTO
    """``exact`` (sibnn's integer IR, ``flow.hw.lower``), ``finn`` (FINN's ConvertQONNXtoFINN and
    streamlining) or ``auto`` (exact where the IR covers the graph, else finn)."""
    target_fps: int | None = None
    """Throughput target for folding; None maximises throughput within the board budget."""
    budget_fraction: float | None = None
    """Override of the board file's budget fraction."""
    verify_inputs: int = 64
    """How many inputs every executable stage is checked on (seeded, with extremes and, where
    installed, real Fashion-MNIST images)."""
    sim: SimMode = SimMode.NONE
    """Run the generated code after ``hw_codegen``: ``cppsim`` (HLS C++ with g++), ``rtlsim``
    (RTL with Verilator), ``all`` or ``none``; exact against the golden model or the build fails."""
    sim_inputs: int | None = None
    """How many of the verification inputs the code simulation runs (None: the first
    ``SIM_INPUTS_DEFAULT``, or all of them if fewer: generated code runs about 10-100x slower per
    input than FINN's python models)."""
    sim_jobs: int = 2
    """Parallel compiles and simulations for ``sim``."""
    sim_frames: int = 8
    """Frames the stitched simulation feeds back to back (``sim: stitched|all``)."""
    fifo_sizing: FifoSizing = FifoSizing.SIM
    """``sim``: FIFO depths from the stitched simulation; ``finn``: FINN's own sizing."""
    fifo_depths: str | None = None
    """A FINN FIFO config file (``{"fifo_depths": {...}}``) whose depths the stitched
    simulation imposes instead of sizing them (what-if runs)."""
    seed: int = 0
    """Seed of the verification inputs and of untrained weights."""
    model_overrides: dict = field(default_factory=dict)
    """Registry overrides for an untrained model (e.g. ``{"depth": [1, 1]}``)."""
    mvau_wwidth_max: int = MVAU_WWIDTH_MAX
    """FINN's cap on MVAU weight-stream width per PE (bits)."""
    dsp_multipliers: bool = True
    """With automatic folding, put the multipliers of HLS MVAUs with weights and inputs of
    >= 4 bits each (e.g. an 8-bit stem: 8-bit pixels x 8-bit weights) into DSP slices, as long as
    the DSP budget allows (:func:`flow.hw.folding.use_dsp_multipliers`). FINN's HLS MVAU builds
    them from LUTs by default; XNOR and 1-bit-weight layers have no multipliers either way."""
    require_bitfile: bool = False
    """Fail (exit 2) instead of skipping when Vivado-only outputs cannot be produced."""
    allow_over_budget: bool = False
    """Build a folding whose estimates exceed the board budget (otherwise an error, exit 2)."""

    @property
    def model_name(self) -> str:
        if self.onnx:
            return Path(self.onnx).name.removesuffix(".onnx").removesuffix(".qonnx")
        return self.model or DEFAULT_MODEL

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("build") / f"{self.model_name}_{self.board}"

    def to_dict(self) -> dict:
        return to_dict(self)


def load_board(name: str, budget_fraction: float | None = None) -> BoardConfig:
    """Load the shipped board ``name`` (``flow/boards/<name>.yaml``) or a path to a board YAML."""
    if name.endswith((".yaml", ".yml")):
        board_id, found = Path(name).stem, (Path(name) if Path(name).is_file() else None)
        if found is None:
            raise ConfigError(f"board file {name} not found; give an existing board YAML or a "
                              f"shipped board: {', '.join(list_boards())}")
    else:
        board_id, found = name, board_file(name)
    if found is None:
        raise ConfigError(f"unknown board {name!r}; valid boards: {', '.join(list_boards())}")
    with nullcontext(found) if isinstance(found, Path) else as_file(found) as path:
        return _board_from(load_mapping(path), board_id, path, budget_fraction)


def _board_from(data: dict, board_id: str, path: Path,
                budget_fraction: float | None) -> BoardConfig:
    """Check one board file's mapping (read from ``path``) and make its :class:`BoardConfig`."""
    check_keys(BoardConfig, {**data, "name": board_id}, str(path))
    cap = data.get("capacity")
    if not isinstance(cap, dict) or sorted(cap) != sorted(RESOURCES):
        raise ConfigError(f"{path}: capacity must list exactly {', '.join(RESOURCES)}")

    def get(key: str, tp: type, default=None):
        if key not in data and default is None:
            raise ConfigError(f"{path}: missing key {key}")
        return coerce(tp, data.get(key, default), f"{path}: {key}")

    for k, v in cap.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{path}: capacity.{k} must be a non-negative integer, got {v!r}")
    try:
        shell = ShellFlow(data.get("shell_flow_type"))
    except ValueError:
        raise ConfigError(f"{path}: shell_flow_type must be one of "
                          f"{', '.join(f.value for f in ShellFlow)}, got "
                          f"{data.get('shell_flow_type')!r}") from None
    board = BoardConfig(
        name=board_id, board=get("board", str), fpga_part=get("fpga_part", str),
        synth_clk_period_ns=get("synth_clk_period_ns", float), shell_flow_type=shell,
        capacity=dict(cap),
        budget_fraction=(float(budget_fraction) if budget_fraction is not None
                         else get("budget_fraction", float, 0.8)),
        capacity_source=get("capacity_source", str, ""),
    )
    if not 0.0 < board.budget_fraction <= 1.0:
        raise ConfigError(f"{path}: budget_fraction must be in (0, 1], got {board.budget_fraction}")
    if board.synth_clk_period_ns <= 0:
        raise ConfigError(f"{path}: synth_clk_period_ns must be positive")
    return board


def resolve_build_config(config_file: str | Path | None = None, **cli) -> BuildConfig:
    """Defaults -> YAML/JSON file -> CLI values (``None`` CLI values do not override)."""
    merged: dict = {}
    if config_file is not None:
        data = load_mapping(Path(config_file))
        check_keys(BuildConfig, data, str(config_file))
        merged.update(data)
    check_keys(BuildConfig, cli, "command line")
    merged.update({k: v for k, v in cli.items() if v is not None})
    hints = typing.get_type_hints(BuildConfig)
    cfg = BuildConfig(**{k: coerce(hints[k], v, f"config key {k}") for k, v in merged.items()})
    if cfg.model and cfg.onnx:
        raise ConfigError("give either --model or --onnx, not both")
    if cfg.onnx and cfg.checkpoint:
        raise ConfigError("--checkpoint applies to --model, not to --onnx")
    if cfg.verify_inputs < 1:
        raise ConfigError("verify_inputs must be >= 1")
    if cfg.sim_inputs is not None and not 1 <= cfg.sim_inputs <= cfg.verify_inputs:
        raise ConfigError(f"sim_inputs must be in [1, verify_inputs={cfg.verify_inputs}], "
                          f"got {cfg.sim_inputs}")
    if cfg.sim_frames < 2:
        raise ConfigError(f"sim_frames must be >= 2 (frames back to back), got {cfg.sim_frames}")
    if "stitched" in SimMode(cfg.sim).kinds and cfg.sim_frames > cfg.verify_inputs:
        raise ConfigError(f"sim_frames ({cfg.sim_frames}) must not exceed verify_inputs "
                          f"({cfg.verify_inputs}): the frames are verification inputs")
    if cfg.fifo_depths is not None and "stitched" not in SimMode(cfg.sim).kinds:
        raise ConfigError("--fifo-depths imposes depths on the stitched simulation: use it with "
                          "--sim stitched or --sim all")
    if cfg.sim_jobs < 1:
        raise ConfigError(f"sim_jobs must be >= 1, got {cfg.sim_jobs}")
    if cfg.target_fps is not None and cfg.target_fps < 1:
        raise ConfigError(f"target_fps must be >= 1 frame per second, got {cfg.target_fps}")
    return cfg


def write_config(cfg: BuildConfig, board: BoardConfig, out_dir: Path) -> Path:
    """Write the resolved build and board config to ``out_dir/build_config.yaml``."""
    b = dataclasses.asdict(board)
    b["shell_flow_type"] = board.shell_flow_type.value
    path = Path(out_dir) / "build_config.yaml"
    path.write_text(yaml.safe_dump({"build": cfg.to_dict(), "board": b}, sort_keys=False))
    return path
