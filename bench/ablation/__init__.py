"""Accuracy ablation on the Fashion-MNIST test set, and the cost of a distillation step.

Variants (all trained for the same epochs, each with every seed):

=============  ====================================  ==========================  ==============
variant        model                                 loss                        teacher
=============  ====================================  ==========================  ==============
teacher        si_resnet_fp                          CE                          -
plain          resnet_w1a1                           CE                          -
kd             resnet_w1a1                           CE + logit KD               teacher
si_kd          si_resnet_w1a1                        CE + logit KD               teacher
full           si_resnet_w1a1 (SI reads ``a``)       CE + logit KD + block MSE   teacher
si_h           si_h_resnet_w1a1 (SI reads ``h``)     CE + logit KD + block MSE   teacher
mbh            resnet_w1a1, 8-bit head, sign bias    CE + logit KD + block MSE   teacher
si_h_mbh       si_h_resnet_w1a1_mbh                  CE + logit KD + block MSE   teacher
si_h_mbh_ds    si_h_mbh, SI in downsample blocks     CE + logit KD + block MSE   teacher
staged         si_resnet_w1a1                        as full, in two steps       teacher
mbh_ce         resnet_w1a1, 8-bit head, sign bias    CE                          -
=============  ====================================  ==========================  ==============

``mbh`` is ``si_h_mbh`` without SI, so the SI branch is measured on both heads (si_kd vs kd,
si_h_mbh vs mbh). ``mbh_ce`` is the same network trained with CE only: the plain W1A1 baseline of
the shipped network, against which the method (SI + block KD) is judged (goal
``method_gain_mbh``; ``plain`` is the 1-bit-head baseline of ``method_gain``). ``staged`` is the
staged recipe (Real-to-Binary): the same epochs, split into ``epochs // 2`` with binary
activations and float weights (stage ``staged_act``) and the rest with binary weights too; it
needs at least 2 epochs and is compared with ``full`` on the *validation* split
(``decisions.staged``), never on the test set.

``si_h_mbh_ds`` (``si_blocks: downsample``) is the cheaper SI in hardware (two SI branches instead
of four). The teacher stage comes from ``configs/fmnist_teacher.yaml`` (its optimizer and
augmentation), the students from the shipped student recipe ``configs/fmnist_student.yaml`` (its
8-bit stem, augmentation, channels-last layout and best-validation-epoch selection); only
epochs, seeds, the training subset and the dataset change here (``--variants`` trains a subset).
Every student starts from its teacher's weights (``--student-init scratch`` starts them fresh).
The numbers are those of the epoch each stage ships (the recipe's ``select``).

Scheduling: every (seed, stage) is a job in its own process (this module with ``--train-seed``
and ``--train-stage``), started as soon as the stages it needs are complete, at most ``--jobs``
at a time. On a GPU (``--device cuda``) every job runs at once on the one device with the data
resident on it: the seeds' teachers first, then all their students together::

    python -m bench.accuracy --device cuda --epochs 30 --seeds 0 1 2          # the GPU ablation
    python -m bench.accuracy --epochs 2 --train-subset 27500 --jobs 2         # CPU, 2 cores
    python -m bench.accuracy --cost-only
    python -m bench.accuracy --record-device-run OUT --note "..." [--discard VARIANT ...]

``scripts/device_ablation.sh`` runs the GPU command on the lent device machine with a deadline and
returns the results, a log and the weights; ``--record-device-run`` stores such an output, complete
or not (per-stage progress and step times included), under ``device_runs``.

The step-cost ratio is measured in one process: a distillation step (frozen teacher forward +
student forward with taps + CE/KD/block loss + backward + Adam) against a plain CE step of the same
student, interleaved, same batch, median of ``--cost-steps`` each. Both use the fused quantizer
forward that training uses (``quant_models/fastpath.py``); the same distillation step with
Brevitas' own forward is timed alongside, giving ``fused_forward_speedup``, and the fused step in
the channels-last layout (``channels_last_speedup``).

Results: ``bench/results/accuracy.json`` and ``accuracy.md`` (``--results-dir``), rewritten while
the jobs run, with exactly what was run (epochs, seeds, subset, device, wall time) and
``complete: false`` until every job is done. A rerun of the same command resumes.

Full-budget runs: on CPU the ablation fits only a small budget, so single training runs at the
shipped budget (``sibnn-train``, e.g. the shipped recipe with another student) are recorded beside
it, each with its recipe, epochs, device, threads and wall time, and every SI run against its
twin without SI trained with the same recipe (:data:`quant_models.registry.SI_TWINS`), on validation and on test::

    python -m bench.accuracy --record-runs runs/fmnist_plain_mbh_e18_ema runs/fmnist_si_h_mbh_e18_ema
"""
