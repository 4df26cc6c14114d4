"""A board file's FPGA against what FINN knows, before step 1: the part, the board it names and
the capacity the folding budget is taken from. Without this a misspelt ``fpga_part`` builds to
the end here and only Vivado would notice, hours later."""

from __future__ import annotations

from sibnn_base.errors import ConfigError


def check_part(board) -> None:
    """Raise a one-line :class:`ConfigError` unless ``board`` (a :class:`flow.config.BoardConfig`)
    names a part FINN knows (``finn.util.basic.part_map``), the part FINN pairs with its
    ``board`` name, and a capacity no larger than FINN's resource table for that board
    (``finn.util.platforms``, summed over its SLRs) where FINN has one."""
    from finn.util.basic import part_map
    from finn.util.platforms import platforms

    where = f"board file {board.name}"
    known = sorted(set(part_map.values()))
    if board.fpga_part not in known:
        raise ConfigError(f"{where}: fpga_part {board.fpga_part!r} is not a part FINN knows; "
                          f"known parts: {', '.join(known)}")
    if board.board not in part_map:
        raise ConfigError(f"{where}: board {board.board!r} is not a board FINN knows; known "
                          f"boards: {', '.join(sorted(part_map))}")
    if part_map[board.board] != board.fpga_part:
        raise ConfigError(f"{where}: fpga_part {board.fpga_part!r} is not the part of board "
                          f"{board.board!r}, which FINN builds for {part_map[board.board]!r}")
    if board.board not in platforms:
        return
    slrs = platforms[board.board]().compute_resources
    table = dict(zip(("LUT", "FF", "BRAM_18K", "URAM", "DSP"),
                     (sum(col) for col in zip(*slrs, strict=True)), strict=True))
    over = [f"{k} {board.capacity[k]} > {v}" for k, v in table.items()
            if k in board.capacity and board.capacity[k] > v]
    if over:
        raise ConfigError(f"{where}: capacity exceeds what {board.fpga_part} has by FINN's "
                          f"resource table ({'; '.join(over)})")
