"""The one place that touches FINN's process-wide state and checks for the Xilinx tools.

FINN (finn-plus 1.6.1) has three traps when it runs without the FINN CLI and without Vivado
(FINDINGS.md):

* its builder and code generators need global *settings* (``finn.util.settings``): otherwise
  they read ``FINN_BUILD_DIR``/``FINN_SETTINGS`` from the environment or create ``~/.finn``;
* ``finn.builder.build_dataflow_steps`` does ``from finn.xsi import SimEngine``, and that lazy
  name raises ``OSError: XILINX_VIVADO environment variable not set`` without Vivado;
* ``finn deps update`` / ``finn build`` die on the same error.

This module handles all three, once, and nowhere else in sibnn imports FINN's builder. Importing
it has no side effects: nothing happens until :func:`detect_tools` or :func:`finn_session` is
called. ``os.environ`` is never modified.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from sibnn_base.errors import ToolMissingError

HW_DOMAIN = "finn.custom_op.fpgadataflow"
"""The ONNX domain of FINN's hardware layers (``*_hls``/``*_rtl`` live in sub-domains of it)."""

MVAU_WWIDTH_MAX = 36
"""FINN's default cap on an MVAU's weight-stream width per cycle, in bits
(``DataflowBuildConfig.mvau_wwidth_max``); the folding search may widen it."""


def is_hw_node(node) -> bool:
    """Whether an ONNX node is one of FINN's hardware layers (generic or specialised)."""
    return node.domain.startswith(HW_DOMAIN)


VIVADO_MISSING = "skipped: Vivado not found"
"""What a Vivado-only output is reported as when the tools are absent (never faked)."""


@dataclass(frozen=True)
class ToolStatus:
    """Which Xilinx tools this process can use, found once at start."""

    vivado: str | None
    """The Vivado install directory (``XILINX_VIVADO`` with a ``vivado`` binary), or None."""
    reason: str
    """Why Vivado-only work is unavailable (empty when it is available)."""

    @property
    def has_vivado(self) -> bool:
        return self.vivado is not None

    @property
    def skipped(self) -> str:
        """The status string of an output this process cannot produce."""
        return VIVADO_MISSING if not self.has_vivado else ""

    def require_vivado(self, what: str) -> None:
        """Raise :class:`ToolMissingError` naming ``what`` when Vivado is absent."""
        if not self.has_vivado:
            raise ToolMissingError(f"{what} needs Xilinx Vivado, which was not found ({self.reason})")


def detect_tools(environ: dict[str, str] | None = None) -> ToolStatus:
    """Look for Vivado (read-only; ``environ`` defaults to ``os.environ``)."""
    env = os.environ if environ is None else environ
    vivado = env.get("XILINX_VIVADO")
    reason = ""
    if not vivado:
        vivado, reason = None, "XILINX_VIVADO is not set"
    elif not (Path(vivado) / "bin" / "vivado").exists() and shutil.which("vivado") is None:
        vivado, reason = None, f"XILINX_VIVADO={env.get('XILINX_VIVADO')} has no bin/vivado"
    return ToolStatus(vivado=vivado, reason=reason)


def _install_xsi_guard(tools: ToolStatus) -> None:
    """Make ``from finn.xsi import SimEngine`` safe without Vivado.

    ``SimEngine`` is only a type annotation in ``build_dataflow_steps``; without Vivado no RTL
    simulation can run anyway, so binding the name to None is honest. With Vivado, FINN's own
    lazy loader builds/loads its XSI extension as usual.
    """
    import finn.xsi as xsi

    if not tools.has_vivado and "SimEngine" not in vars(xsi):
        xsi.SimEngine = None  # type: ignore[attr-defined]


@contextmanager
def finn_session(build_dir: Path, tools: ToolStatus, log_file: Path | None = None
                 ) -> Iterator[ModuleType]:
    """Run FINN with its settings pointing at ``build_dir`` (FINN's scratch directory).

    Yields ``finn.builder.build_dataflow_steps``. The previous global settings are restored on
    exit, and the environment is left untouched (``auto_set_environment_vars=False``; the
    settings file path is one inside ``build_dir`` that need not exist, so ``~/.finn`` is never
    created). With ``log_file``, FINN's logger writes there instead of the console (restored on
    exit).
    """
    import logging

    import finn.util.settings as settings_mod
    from finn.interface.settings import FINNSettings

    finn_log = logging.getLogger("finn_logger")
    handler = None
    saved_propagate = finn_log.propagate
    if log_file is not None:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        finn_log.addHandler(handler)
        finn_log.propagate = False

    build_dir = Path(build_dir).absolute()
    build_dir.mkdir(parents=True, exist_ok=True)
    previous = settings_mod._SETTINGS
    settings_mod._SETTINGS = FINNSettings.init(
        override_settings_path=build_dir / "finn_settings.yaml",
        flow_config=build_dir / "flow.yaml",
        auto_set_environment_vars=False,
        finn_build_dir=str(build_dir),
    )
    try:
        _install_xsi_guard(tools)
        import finn.builder.build_dataflow_steps as steps

        yield steps
    finally:
        settings_mod._SETTINGS = previous
        if handler is not None:
            finn_log.removeHandler(handler)
            handler.close()
            finn_log.propagate = saved_propagate


def dataflow_config(output_dir: Path, *, board: str, fpga_part: str, clock_ns: float,
                    shell_flow_type: str, folding_file: Path | None = None,
                    target_fps: int | None = None, vivado: bool = False,
                    mvau_wwidth_max: int = MVAU_WWIDTH_MAX):
    """A FINN ``DataflowBuildConfig`` for calling FINN's own step functions directly.

    Our runner does its own verification, so FINN's ``verify_steps`` stays empty.
    """
    from finn.builder.build_dataflow_config import (
        DataflowBuildConfig,
        DataflowOutputType,
        ShellFlowType,
    )

    outputs = [DataflowOutputType.ESTIMATE_REPORTS]
    if vivado:
        outputs += [DataflowOutputType.STITCHED_IP, DataflowOutputType.BITFILE,
                    DataflowOutputType.PYNQ_DRIVER, DataflowOutputType.DEPLOYMENT_PACKAGE]

    return DataflowBuildConfig(
        output_dir=str(output_dir),
        synth_clk_period_ns=float(clock_ns),
        board=board,
        fpga_part=fpga_part,
        shell_flow_type=ShellFlowType(shell_flow_type),
        folding_config_file=str(folding_file) if folding_file else None,
        target_fps=target_fps,
        generate_outputs=outputs,
        mvau_wwidth_max=mvau_wwidth_max,
        verify_steps=[],
        standalone_thresholds=False,
    )
