"""The torch.compile check: a compiled training step is used only if it matches the eager one.

:func:`checked_compile` compiles a step ``(x, y) -> (loss, ...)`` and compares its loss and every
gradient with the eager step's on one batch; a step that fails to compile, fails to run or
disagrees is replaced by the eager step, with a line to the log saying why.
"""

from __future__ import annotations

import torch
from torch import nn

LOSS_RTOL = 1e-2
"""How far the compiled step's loss may sit from the eager one's, relative (:func:`checked_compile`).
Measured: a student started from the SGD teacher (loss 54 on its first batch, most of it the
distillation terms on logits the binary net has not yet learnt) gave 54.03 vs 54.25 (0.4%) with
all 39 gradients matching; a 1e-3 bound rejected that step and the run trained eager, about 30%
slower. The gradients are the real check (the failure it guards against gave zero gradients)."""


def checked_compile(step, model: nn.Module, x: torch.Tensor, y: torch.Tensor, log=print,
                    compiler=torch.compile):
    """``compiler(step)`` if its loss and every gradient on one batch ``(x, y)`` match the eager
    step's (:func:`_same_direction`), else ``step`` itself, with a line to ``log`` saying why.
    ``model``'s buffers (BatchNorm statistics) are restored after the check, so a run continues as
    if it had not happened.

    "Match" cannot mean equal: fused arithmetic moves a few pre-activations across zero, and each
    flipped sign changes the gradients downstream (measured on CPU, ``si_h_resnet_w1a1_mbh``,
    batch 256: loss within 5e-5, every gradient tensor at cosine >= 0.997 to eager's, but single
    entries up to 16% of the tensor's largest apart). The loss may differ by :data:`LOSS_RTOL`.

    Why the check: on the GPU machine (torch 2.11, CUDA inductor) the compiled step of every
    binary student gave wrong gradients (22 of 23 tensors, most of them zero: the custom
    autograd functions of :mod:`quant_models.fastpath`), so the students did not learn, while the
    FP teacher trained as in eager mode; on CPU (torch 2.13) the same compiled step matched."""
    try:
        compiled = compiler(step)
    except Exception as e:  # noqa: BLE001 - any failure to compile: train eager, say so
        log(f"compile failed ({type(e).__name__}: {e}); training eager")
        return step
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [(b, b.detach().clone()) for b in model.buffers()]

    def grads(fn):
        loss = fn(x, y)[0]
        return float(loss.detach()), torch.autograd.grad(loss, params, allow_unused=True)
    try:
        (le, ge), (lc, gc) = grads(step), grads(compiled)
    except Exception as e:  # noqa: BLE001
        log(f"compiled step failed ({type(e).__name__}: {e}); training eager")
        return step
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
    bad = [i for i, (a, c) in enumerate(zip(ge, gc, strict=True)) if not _same_direction(a, c)]
    if bad or abs(le - lc) > LOSS_RTOL * abs(le) + 1e-6:
        log(f"compiled step rejected: loss {lc:.6g} vs eager {le:.6g}, {len(bad)} of "
            f"{len(params)} gradients differ from the eager step's on one batch; training eager")
        return step
    log(f"compiled step checked against the eager step on one batch: loss and {len(params)} "
        f"gradients match")
    return compiled


def _same_direction(a: torch.Tensor | None, c: torch.Tensor | None) -> bool:
    """Whether gradient ``c`` is ``a`` up to rounding and a few flipped signs: cosine >= 0.99 and
    norms within 5% (a zero ``a`` needs a zero ``c``)."""
    if a is None or c is None:
        return a is None and c is None
    a, c = a.double().flatten(), c.double().flatten()
    na, nc = float(a.norm()), float(c.norm())
    if na == 0.0:
        return nc == 0.0
    return abs(nc / na - 1.0) <= 0.05 and float(a @ c) / (na * nc + 1e-300) >= 0.99
