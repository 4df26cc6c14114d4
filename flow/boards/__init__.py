"""The board files sibnn ships: one YAML per board, named ``<board-id>.yaml``.

They are package data, read through :mod:`importlib.resources`, so an installed wheel finds them
as a source checkout does. Each keeps FINN's vocabulary (``board``, ``fpga_part``,
``synth_clk_period_ns``, ``shell_flow_type``) plus the device capacity and the budget fraction;
:func:`flow.config.load_board` reads and checks one.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

SUFFIX = ".yaml"


def list_boards() -> list[str]:
    """The ids of the shipped boards (``pynq-z2``, ...), sorted."""
    return sorted(f.name.removesuffix(SUFFIX) for f in files(__name__).iterdir()
                  if f.name.endswith(SUFFIX))


def board_file(board_id: str) -> Traversable | None:
    """The shipped file of ``board_id``, or None where sibnn ships no such board."""
    if board_id not in list_boards():
        return None
    return files(__name__) / f"{board_id}{SUFFIX}"
