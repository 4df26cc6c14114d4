"""vulture's whitelist: names that are used where vulture cannot see it (``make lint`` runs
``vulture`` over the packages with this file; see [tool.vulture] in pyproject.toml).

Each entry says who uses it. Handlers found by name (``op_*``, ``lower_*``) and functions
registered by decorator (``@register_model``, ``@emits``) are excluded in pyproject instead."""

# Bare attribute accesses are how a vulture whitelist marks a name used; ``_`` stands for any object.
# ruff: noqa: B018, F821
from flow import config, plots, studies
from flow.hw import folding
from flow.proof import verify
from quant_models import data, quantizers

# Public API of the notebooks (notebooks/*.ipynb call these; vulture does not read notebooks).
plots.plot_board_resources
plots.plot_board_throughput
plots.plot_si_sweep
plots.plot_pareto
plots.plot_trace
studies.full_mode
studies.board_estimates
studies.si_sweep
studies.load_accuracy
studies.exactness_trace
studies.mismatch_demo
studies.board_names

# Enum members chosen by value from a config file or the command line (``SimMode("stitched")``,
# a board's ``platform: vivado_zynq``).
config.SimMode.STITCHED
config.ShellFlow.VIVADO_ZYNQ
config.ShellFlow.VITIS_ALVEO

# Record fields written to JSON (summary.json, verification.json) through dataclasses.asdict.
config.BoardConfig.capacity_source
folding.Estimate.critical_path_cycles
verify.Comparison.n_values

# Protocol hooks: pickle's Unpickler.find_class; Brevitas' injector reads quantizer class
# attributes and properties by name.
data._ArrayUnpickler.find_class
quantizers._ConstQuant.restrict_scaling_type
quantizers._ConstQuant.zero_point_impl
quantizers._ConstQuant.float_to_int_impl_type
quantizers._ConstQuant.scaling_per_output_channel
quantizers._ConstQuant.narrow_range
quantizers._ConstQuant.quant_type
quantizers.BinaryWeightQuant.scaling_const
quantizers.BipolarActQuant.min_val
quantizers.BipolarActQuant.max_val

# Attributes set on third-party objects: warnings.showwarning (runlog, runner), a stand-in
# finn.xsi module's SimEngine (env/finn.py), ONNX Runtime SessionOptions and ModelProto fields.
_.showwarning
_.SimEngine
_.ir_version
_.graph_optimization_level
_.intra_op_num_threads
_.inter_op_num_threads
_.execution_mode
_.log_severity_level
_.optimized_model_filepath
_.enable_profiling
_.profile_file_prefix
