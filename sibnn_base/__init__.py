"""sibnn's shared base, below both ``quant_models`` and ``flow``: the error hierarchy and CLI
error contract (:mod:`~sibnn_base.errors`), the typed config reader (:mod:`~sibnn_base.typed`)
and every write to the user's disk (:mod:`~sibnn_base.atomic`). It imports neither package."""
