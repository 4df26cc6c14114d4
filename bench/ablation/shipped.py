"""The shipped checkpoints evaluated on their whole test sets (``--shipped``)."""

from __future__ import annotations

import torch

from bench.ablation.goals import shipped_goals
from quant_models import build_model


def shipped(data_dir: str | None = None, batch: int = 1000) -> dict:
    """Every registry model with a shipped checkpoint, evaluated here on the whole test set of
    its dataset by a plain float loop (``pixels / 255``, eval mode, argmax), against the top-1
    its registry entry claims; the issue's goals for the shipped student (the build's default
    model) and its teacher."""
    from flow.config import DEFAULT_MODEL
    from quant_models.data import load_test
    from quant_models.registry import TEACHER_OF, get_entry, list_models

    models = {}
    for name in list_models():
        entry = get_entry(name).pretrained
        if entry is None:
            continue
        test = load_test(entry.dataset, data_dir)
        model = build_model(name, pretrained=True)
        correct = 0
        with torch.no_grad():
            for i in range(0, len(test.x), batch):
                correct += int((model(test.x[i:i + batch]).argmax(1) == test.y[i:i + batch]).sum())
        acc = round(100.0 * correct / len(test.x), 2)
        models[name] = {"file": entry.file, "sha256": entry.sha256, "dataset": entry.dataset,
                        "test_images": len(test.x), "test_acc": acc,
                        "registry_top1": entry.top1, "matches_registry": acc == entry.top1,
                        "command": entry.command}
    out: dict = {"default_model": DEFAULT_MODEL, "models": models,
                 "evaluated_by": "plain float loop over pixels / 255 on the whole test set"}
    teacher_name = TEACHER_OF.get(DEFAULT_MODEL, "")
    out["goals"] = shipped_goals(DEFAULT_MODEL, teacher_name, models.get(DEFAULT_MODEL),
                                 models.get(teacher_name))
    return out
