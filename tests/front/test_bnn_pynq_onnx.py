"""Brevitas' ``bnn_pynq`` networks as a user brings them: exported the plain way
(``brevitas.export.export_qonnx(model, input_t=..., export_path=...)``, no cleanup), then
``flow/build.py --onnx``. The support check judges the graph the flow compiles (after constant
folding and qonnx's cleanup), names what it refuses by the file's own node names, and every
network it accepts builds through ``hw_codegen`` all-HW and exact.

Default run: TFC-W1A1 from both of Brevitas' exporters (TorchScript keeps TensorNorm's ``Pow`` on
two initializers; torch.export, Brevitas' default with this torch, does not). ``slow``: TFC, SFC,
LFC and CNV in every weight/activation width Brevitas ships a config for, both exporters.
"""

from __future__ import annotations

import onnx
import pytest

from flow.build import build
from flow.config import resolve_build_config
from flow.front.export import load_qonnx
from flow.report import load_summary
from sibnn_base.errors import ConfigError, UnsupportedGraphError
from tests.conftest import assert_every_stage_exact, assert_one_line_error, run_cli
from tests.flow_models import bnn_pynq_plain

EXPORTERS = {"torchscript": False, "default": None}


def _quiet(_msg: str) -> None:
    pass


BOARD = {"CNV_2W2A": "zcu104"}
"""Where a network does not fit the Pynq-Z2's budget (CNV-W2A2's 2-bit weights need 235 BRAM18
at the slowest folding, over 80% of its 280), the build refuses it at ``fold`` naming the need
(:func:`test_cnv_w2a2_over_the_pynq_z2_budget_is_refused_with_the_need`); it is built for a
larger board."""


def build_plain(name: str, exporter: str, tmp_path, n_inputs: int = 16,
                board: str | None = None) -> dict:
    """Export ``name`` plainly, build it through ``hw_codegen`` and return the summary, asserting
    every executed stage exact and the graph all-HW."""
    onnx_path = bnn_pynq_plain(name, tmp_path / f"{name}.onnx", dynamo=EXPORTERS[exporter])
    # one SetFolding at a fixed target: the folding search is not what is tested here
    out = build(resolve_build_config(onnx=str(onnx_path), output_dir=str(tmp_path / "out"),
                                     board=board or BOARD.get(name, "pynq-z2"),
                                     stop_step="hw_codegen", verify_inputs=n_inputs,
                                     target_fps=1000), echo=_quiet)
    s = load_summary(out)
    assert_every_stage_exact(s, n_inputs, {"export", "convert_to_hw", "hw_codegen"})
    return s


def test_tensornorm_pow_on_initializers_is_folded_not_refused(tmp_path):
    """The raw TorchScript export holds ``Pow`` (TensorNorm's ``(var + eps) ** 0.5``) on two
    initializers and lists its weights as graph inputs; cleanup folds the ``Pow`` away, so the
    loader accepts the file, and the graph it returns has no ``Pow`` and one input."""
    path = bnn_pynq_plain("TFC_1W1A", tmp_path / "tfc.onnx", dynamo=False)
    raw = onnx.load(str(path))
    pows = [n for n in raw.graph.node if n.op_type == "Pow"]
    assert pows and all(not any(i == n.output[0] for n in raw.graph.node) for i in pows[0].input)
    clean = load_qonnx(path)
    assert "Pow" not in {n.op_type for n in clean.graph.node}
    assert len(clean.graph.input) == 1
    assert not [p for n in clean.graph.node for p in n.metadata_props
                if p.key == "sibnn.source_name"]  # the loader's name tags are gone


def test_unsupported_node_after_cleanup_is_named_as_the_file_names_it(tmp_path):
    """A node the cleaned graph still holds is refused, under the file's own name (cleanup renames
    every node), in one line with exit code 2."""
    path = bnn_pynq_plain("TFC_1W1A", tmp_path / "tfc.onnx", dynamo=False)
    raw = onnx.load(str(path))
    node = next(n for n in raw.graph.node if n.op_type == "Div")
    node.op_type, node.name = "Erf", "/my/erf"
    del node.input[1:]
    onnx.save(raw, str(path))
    with pytest.raises(UnsupportedGraphError, match=r"Erf \(/my/erf\)"):
        load_qonnx(path)
    proc = run_cli(["flow/build.py", "--onnx", str(path), "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(proc, "unsupported layer(s): Erf (/my/erf)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
def test_tfc_w1a1_plain_export_builds_all_hw_exact(tmp_path, exporter):
    build_plain("TFC_1W1A", exporter, tmp_path)


SLOW_NETS = ["TFC_1W2A", "TFC_2W2A", "SFC_1W1A", "SFC_1W2A", "SFC_2W2A", "LFC_1W1A", "LFC_1W2A",
             "CNV_1W1A", "CNV_1W2A", "CNV_2W2A"]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
@pytest.mark.parametrize("name", SLOW_NETS)
def test_bnn_pynq_plain_export_builds_all_hw_exact(tmp_path, name, exporter):
    build_plain(name, exporter, tmp_path)


@pytest.mark.slow
def test_cnv_w2a2_over_the_pynq_z2_budget_is_refused_with_the_need(tmp_path):
    with pytest.raises(ConfigError, match=r"does not fit pynq-z2.*BRAM_18K \d+ vs budget 224"):
        build_plain("CNV_2W2A", "default", tmp_path, board="pynq-z2")
