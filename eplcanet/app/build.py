"""What the settings build: the seeded RNGs, the network, its optimiser and its phases."""

from __future__ import annotations

import random

import numpy as np
import torch

from ..energy.dynamics import Relaxation
from ..energy.feedforward import FF_CNN
from ..energy.learning import Phases
from ..energy.networks import P_CNN, P_MLP, VF_CNN, VF_MLP, EnergyNet
from .flags import MLP_MODELS
from .lca import build_lca_cnn
from .settings import Settings


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random: two CPU runs with the same seed give identical metrics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Settings, in_shape: tuple[int, ...], n_classes: int,
                dictionary_sync=None) -> EnergyNet:
    """The network named by --model for inputs of shape in_shape (C, H, W), relaxing with the
    --updates order and --conv-algo; dictionary_sync: a multi-process run's context, which an
    LCACNN's dictionary steps share (None: one process)."""
    m = cfg.model
    if m.fc[-1] != n_classes and m.model not in MLP_MODELS:
        raise SystemExit(f"error: the last --fc size ({m.fc[-1]}) must equal the number of "
                         f"classes of --task {cfg.data.task} ({n_classes})")
    common = dict(act=m.act, softmax=m.softmax, loss=m.loss, scale=m.scale,
                  relaxation=Relaxation(cfg.estimator.updates, cfg.run.conv_algo,
                                        cfg.estimator.tol))
    if m.model in MLP_MODELS:
        d = int(np.prod(in_shape))
        archi = list(m.archi) if m.archi else [d, *m.fc]
        if archi[0] != d or archi[-1] != n_classes:
            raise SystemExit(f"error: --archi must start with the input size {d} and end with "
                             f"the number of classes {n_classes}, got {archi}")
        if m.model == "VFMLP":
            return VF_MLP(archi, same_update=m.same_update, **common)
        return P_MLP(archi, **common)
    conv = (in_shape, m.channels, m.kernels, m.strides, m.paddings, m.pools, m.fc)
    if m.model == "LCACNN":
        return build_lca_cnn(cfg, in_shape, dictionary_sync)
    if m.model == "VFCNN":
        return VF_CNN(*conv, same_update=m.same_update, **common)
    if m.model == "FFCNN":
        return FF_CNN(*conv, **common)
    return P_CNN(*conv, **common)


def build_optimizer(cfg: Settings, net: EnergyNet):
    """Optimizer with one parameter group per synapse layer (--lrs, --wds) and its scheduler."""
    o = cfg.optim
    groups = [
        {"params": ps, "lr": lr, "weight_decay": wd}
        for ps, lr, wd in zip(net.synapse_groups(), o.lrs, o.wds)
    ]
    if o.optim == "sgd":
        opt = torch.optim.SGD(groups, lr=o.lrs[0], momentum=o.mmt)
    else:
        opt = torch.optim.Adam(groups, lr=o.lrs[0])
    sched = None
    if o.lr_decay:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs, eta_min=1e-5)
    return opt, sched


def phases_of(cfg: Settings) -> Phases:
    e = cfg.estimator
    hep = {} if e.hep_points is None else {"hep_points": e.hep_points}  # --alg hEP only
    return Phases(e.T1, e.T2, tuple(e.betas), e.random_sign, e.thirdphase, **hep)
