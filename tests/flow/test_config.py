"""Build configuration: defaults -> YAML -> CLI, unknown keys and bad values are ConfigError."""

from __future__ import annotations

import pytest
import yaml

from flow.config import DEFAULT_MODEL, BuildConfig, load_board, resolve_build_config, write_config
from flow.hw.steps import select_steps, step_names
from sibnn_base.errors import ConfigError


def test_defaults():
    cfg = resolve_build_config()
    assert cfg == BuildConfig()
    assert cfg.model_name == DEFAULT_MODEL
    assert str(cfg.resolved_output_dir()) == f"build/{DEFAULT_MODEL}_pynq-z2"


def test_precedence_defaults_yaml_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("board: zcu104\nverify_inputs: 7\ntarget_fps: 100\n")
    cfg = resolve_build_config(f, board="pynq-z1", target_fps=None)
    assert cfg.board == "pynq-z1"  # CLI wins
    assert cfg.verify_inputs == 7  # YAML wins over the default
    assert cfg.target_fps == 100  # a None CLI value does not override


def test_unknown_key_is_an_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("bord: pynq-z2\n")
    with pytest.raises(ConfigError, match="unknown key.*bord"):
        resolve_build_config(f)


def test_malformed_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("board: [pynq-z2\n")
    with pytest.raises(ConfigError, match="malformed"):
        resolve_build_config(f)


def test_bad_value(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("verify_inputs: many\n")
    with pytest.raises(ConfigError, match="verify_inputs"):
        resolve_build_config(f)


def test_unknown_board_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid boards: .*pynq-z2"):
        load_board("pynq-z3")


def test_board_file_unknown_key(tmp_path):
    f = tmp_path / "b.yaml"
    f.write_text(yaml.safe_dump({"board": "Pynq-Z2", "fpga_part": "xc7z020clg400-1",
                                 "synth_clk_period_ns": 10.0, "shell_flow_type": "vivado_zynq",
                                 "capacity": {"LUT": 1, "FF": 1, "BRAM_18K": 1, "URAM": 0,
                                              "DSP": 1}, "clock_mhz": 100}))
    with pytest.raises(ConfigError, match="clock_mhz"):
        load_board(str(f))


def test_resolved_config_is_written(tmp_path):
    cfg = resolve_build_config(board="kv260", verify_inputs=2)
    path = write_config(cfg, load_board("kv260"), tmp_path)
    data = yaml.safe_load(path.read_text())
    assert data["build"]["board"] == "kv260" and data["build"]["verify_inputs"] == 2
    assert data["board"]["fpga_part"] == "xck26-sfvc784-2LV-c"


def test_step_selection():
    names = step_names("finn")
    assert [s.name for s in select_steps("streamline", "convert_to_hw")] == \
        ["streamline", "convert_to_hw"]
    assert len(select_steps(None, None)) == len(names)
    exact = [s.name for s in select_steps(None, "convert_to_hw", "exact")]
    assert exact == ["lower", "tidy_up", "convert_to_hw"]  # the support check is the plan's
    with pytest.raises(ConfigError, match="front end"):
        select_steps("streamline", None, "exact")
    with pytest.raises(ConfigError, match="not a step"):
        select_steps("streamlin", None)
    with pytest.raises(ConfigError, match="comes after"):
        select_steps("hw_codegen", "tidy_up")
