"""Fine-tuning profiles: the settings a job of each block runs with, chosen by one name.

- ``tbftd`` (the default): short jobs in small batches, chosen on both the generated Shapes-40
  and the real CIFAR-10 subset with the paper's checkpoint (the tables and the reasons are in the
  README's *Fine-tuning profiles*; ``bench/finetune.py`` and ``bench/drift.py`` measure them).
- ``paper``: the paper's loop for every block: SGD with momentum 0.9 and weight decay 5e-4,
  batches of 128, at most 10 epochs with early stopping (patience 5) on validation loss, learning
  rate 1e-3 (1e-2 for ``fc``), and every layer in train mode (``bn_mode="train"``), so nothing in
  front of the block is cached: :class:`device.finetune.FinetuneConfig`'s defaults otherwise.

Plain values, no torch: the daemon resolves a job's settings in the API process and the trainer
child builds its :class:`~device.finetune.FinetuneConfig` from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

PROFILES: tuple[str, ...] = ("tbftd", "paper")
DEFAULT_PROFILE = "tbftd"

# Why these (measured in ``bench/drift.py`` and ``bench/finetune.py``; figures in the README):
# - Small batches: on a CPU a sample costs the same time in any batch, while SGD progresses per
#   step; the paper's 128-sample batches give a thousand samples eight steps an epoch.
# - block1 trains as the paper's loop does (``bn_mode="train"``: every BatchNorm layer normalises
#   with the batch's statistics and follows the target data step by step) for three epochs, about
#   0.25 of a ``full`` job on CIFAR-10. On real input drift that is what block1 needs: gaussian
#   noise 5 reaches 72.0% in three epochs (impulse noise 5: 66.9%), where the engine's ``adapt``
#   mode, which holds frozen layers in eval mode, reached 66.8% (62.8% in ten epochs of 128).
#   block2 keeps ``adapt`` with the statistics behind it held (below): the prefix in front of it
#   is then cached.
# - Of the epochs, the latest within 10% of the lowest validation loss is kept: on a few hundred
#   validation images a smaller difference is noise. Stopping after two epochs when the second
#   gained under 2 points (the auto ladder's rule, which has a next rung) lost 5 points on CIFAR-10
#   gaussian noise 3.
# - The statistics behind a block trained in ``adapt`` are held where re-estimation put them
#   (``track_suffix_statistics``): tracked, they move under the gradient's feet (see
#   ``device/finetune.py``); on CIFAR-10 gaussian noise 3 three epochs of block1 reached 73.4%
#   held, 68.9% tracked.
# - BatchNorm statistics are re-estimated on 128 samples: within a point of all of them.
# - ``fc`` re-estimates the statistics too (128 forward passes, about 0.4% of a ``full`` job): on
#   pure output drift it buys nothing, but a relabelled camera is rarely the same camera, and with
#   the source statistics kept an untrained or mismatched base model learnt nothing at all.
_EARLY_BLOCK: dict[str, Any] = {
    "batch_size": 16, "epochs": 3, "loss_tolerance": 0.1, "bn_samples": 128, "track_suffix_statistics": False,
    "patience": 3,
}
_TBFTD: dict[str, dict[str, Any]] = {
    "bn": {"bn_samples": 128},
    "block1": {**_EARLY_BLOCK, "bn_mode": "train"},
    "block2": dict(_EARLY_BLOCK),
    "block3": {"batch_size": 16, "epochs": 3, "bn_samples": 128, "patience": 3},
    "fc": {"batch_size": 16, "bn_samples": 128, "patience": 3},
    # Asked for by name, full fine-tuning is the paper's: the reference every saving is measured against.
    "full": {},
}
_PROFILE_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "tbftd": _TBFTD,
    # ``bn`` trains nothing, and ``full`` has no frozen layer: train mode changes neither.
    "paper": {block: {} if block in ("bn", "full") else {"bn_mode": "train"} for block in _TBFTD},
}


def profile_settings(profile: str, block: str) -> Mapping[str, Any]:
    """The :class:`~device.finetune.FinetuneConfig` fields that ``profile`` sets for ``block``
    (over the config's defaults, which are the paper's); read-only."""
    if profile not in _PROFILE_SETTINGS:
        raise ValueError(f"unknown fine-tuning profile {profile!r}; choose from {PROFILES}")
    blocks = _PROFILE_SETTINGS[profile]
    if block not in blocks:
        raise ValueError(f"unknown block {block!r}; choose from {tuple(blocks)}")
    return MappingProxyType(blocks[block])


def rung_settings(profile: str) -> dict[str, dict[str, Any]]:
    """Every block's settings under ``profile``, as an adaptation ladder takes them (a copy)."""
    if profile not in _PROFILE_SETTINGS:
        raise ValueError(f"unknown fine-tuning profile {profile!r}; choose from {PROFILES}")
    return {block: dict(settings) for block, settings in _PROFILE_SETTINGS[profile].items() if settings}
