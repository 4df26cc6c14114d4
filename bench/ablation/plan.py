"""What an ablation run trains: its variants and, per seed, one experiment of stages.

The teacher stage comes from ``configs/fmnist_teacher.yaml``, the students from the shipped
student recipe ``configs/fmnist_student.yaml``; the variants and their names are
:data:`flow.studies.VARIANTS`.
"""

from __future__ import annotations

from pathlib import Path

from flow.studies import VARIANTS, WIDTH_VARIANTS, width_name
from quant_models.train.config import build_config
from sibnn_base.typed import load_mapping

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "fmnist_student.yaml"
TEACHER_RECIPE = REPO / "configs" / "fmnist_teacher.yaml"

PER_VARIANT_KEYS = ("si_blocks",)
"""Model keys of the recipe that the ablation sets per variant instead (``si_h_mbh`` has SI in
every block, ``si_h_mbh_ds`` in the downsample blocks only, whatever the shipped recipe ships)."""


def variants(epochs: int, widths: tuple[int, ...] = (),
             names: tuple[str, ...] | None = None) -> list[str]:
    """The variants a run of ``epochs`` epochs trains (the staged one needs two stages; only
    ``names`` where given, the teacher always), then ``w<W>_<variant>`` for every extra width."""
    base = [v for v in VARIANTS if (v != "staged" or epochs >= 2)
            and (names is None or v == "teacher" or v in names)]
    return base + [width_name(w, v) for w in widths for v in WIDTH_VARIANTS]


def recipe_model(recipe: dict, drop: tuple[str, ...] = ()) -> dict:
    """The recipe's network keys shared by every variant (its ``model`` less
    :data:`PER_VARIANT_KEYS` and ``drop``)."""
    return {k: v for k, v in (recipe.get("model") or {}).items()
            if k not in PER_VARIANT_KEYS + drop}


def _stage(name: str):
    recipe = load_mapping(TEACHER_RECIPE if name == "teacher" else RECIPE)
    want = "teacher" if name == "teacher" else "student"
    st = dict(next(s for s in recipe["stages"] if s["name"] == want))
    if name == "teacher":  # the teacher recipe's augmentation, for this stage only
        for k in ("hflip", "crop_pad"):
            st.setdefault(k, recipe.get("data", {}).get(k))
    st.pop("init_from", None)
    st.pop("teacher", None)
    return st


def _losses(lw: dict) -> dict[str, dict]:
    """The loss weights of each :attr:`~flow.studies.Variant.loss`, from the recipe's ``lw``."""
    return {"ce": {"ce": lw["ce"]},
            "kd": {"ce": lw["ce"], "kd": lw["kd"], "temperature": lw["temperature"]},
            "full": lw}


def _student_stages(epochs: int, student_init: str, names: tuple[str, ...] | None) -> list[dict]:
    """The stages of every student variant (of ``names``) at the recipe width, in
    :data:`~flow.studies.VARIANTS` order: later variants append."""
    s_stage = _stage("student")
    lw = dict(s_stage["loss_weights"])
    losses = _losses(lw)
    init = "teacher" if student_init == "teacher" else None
    stages = []
    for name in variants(epochs, names=names):
        v = VARIANTS[name]
        if name == "teacher":
            continue
        if name == "staged":
            first = epochs // 2
            stages.append({**s_stage, "name": "staged_act", "student": "si_resnet_w1a1",
                           "model": {"float_weights": True}, "epochs": first, "loss_weights": lw,
                           "teacher": "teacher", "init_from": init})
            stages.append({**s_stage, "name": "staged", "student": "si_resnet_w1a1",
                           "epochs": epochs - first, "loss_weights": lw, "teacher": "teacher",
                           "init_from": "staged_act"})
            continue
        loss = losses[v.loss]
        stages.append({**s_stage, "name": name, "student": v.model, "epochs": epochs,
                       "loss_weights": loss, "model": dict(v.overrides),
                       "teacher": "teacher" if ("kd" in loss or "block" in loss) else None,
                       "init_from": init})
    return stages


def _width_stages(epochs: int, student_init: str, widths: tuple[int, ...]) -> list[dict]:
    """Teacher, plain and SI (:data:`~flow.studies.WIDTH_VARIANTS`) again at every extra width,
    each width with its own teacher."""
    s_stage = _stage("student")
    losses = _losses(dict(s_stage["loss_weights"]))
    stages = []
    for w in widths:
        t = width_name(w, "teacher")
        stages.append({**_stage("teacher"), "name": t, "epochs": epochs,
                       "model": {"width": w}})
        for name in WIDTH_VARIANTS[1:]:
            v = VARIANTS[name]
            loss = losses[v.loss]
            stages.append({**s_stage, "name": width_name(w, name), "student": v.model,
                           "epochs": epochs, "loss_weights": loss,
                           "model": {**v.overrides, "width": w},
                           "teacher": t if ("kd" in loss or "block" in loss) else None,
                           "init_from": t if student_init == "teacher" else None})
    return stages


def ablation_config(seed: int, epochs: int, train_subset: int | None, student_init: str,
                    runs_dir: str, data_dir: str | None, threads: int, *, device: str = "cpu",
                    dataset: str = "fmnist", val_size: int | None = None,
                    widths: tuple[int, ...] = (), names: tuple[str, ...] | None = None,
                    compile: bool = False):
    """One experiment per seed: the teacher stage, then every student variant (of ``names``)."""
    recipe = load_mapping(RECIPE)
    stages = [{**_stage("teacher"), "name": "teacher", "epochs": epochs},
              *_student_stages(epochs, student_init, names),
              *_width_stages(epochs, student_init, widths)]
    sub = f"_n{train_subset}" if train_subset else ""
    data = {**recipe["data"], "name": dataset, "train_subset": train_subset}
    if val_size is not None:
        data["val_size"] = val_size
    if data_dir:
        data["data_dir"] = data_dir
    ds = "" if dataset == "fmnist" else f"{dataset}_"
    d = {**recipe, "experiment": f"ablation_{ds}e{epochs}{sub}_{student_init}_s{seed}",
         "out_dir": runs_dir, "seed": seed, "stages": stages, "data": data,
         "num_threads": threads, "progress": False, "device": device, "compile": compile,
         "model": recipe_model(recipe, () if dataset == "fmnist" else ("input_size",))}
    return build_config(d)


def needs(cfg, stage: str) -> list[str]:
    """The stages of ``cfg`` that ``stage`` reads (teacher, init_from)."""
    st = cfg.stage(stage)
    return [r for r in (st.teacher, st.init_from) if r is not None]
