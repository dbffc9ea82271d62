"""One entry point for every gradient estimator (``--alg``): EP, continual EP, BPTT and
holomorphic EP on the energy-based networks, backprop on the feed-forward baseline. The
estimators live in :mod:`.learning`, :mod:`.holomorphic` and :mod:`.feedforward`; this module
only dispatches, so that those import nothing of each other but the shared pieces."""

from __future__ import annotations

from typing import Callable

from .feedforward import bp_grads
from .holomorphic import hep_grads
from .learning import Estimate, Phases, bptt_grads, cep_grads, ep_grads
from .networks import EnergyNet

ALGORITHMS = ("EP", "BPTT", "BP", "hEP", "CEP")


def estimate_grads(net: EnergyNet, x, y, alg: str, phases: Phases, generator=None,
                   init=None, update: Callable[[], None] | None = None,
                   record: dict | None = None) -> Estimate:
    """Dispatch on --alg; returns the free states (for the running accuracy) and the steps
    taken. `init`: the free phase's initial states (EP only; default zero states). `update`:
    applies ``.grad`` to the weights, which CEP calls at every nudged step (required for CEP,
    unused otherwise); `record`: see ``cep_grads``."""
    if alg == "EP":
        return ep_grads(net, x, y, phases, generator, init)
    if init is not None:
        raise ValueError(f"initial states (--warm-start) apply to EP, not {alg}")
    if alg == "CEP":
        if update is None:
            raise ValueError("CEP updates the weights at every nudged step: pass update=, the "
                             "function that applies .grad (e.g. optimizer.step)")
        return cep_grads(net, x, y, phases, update, generator, record)
    if alg == "BPTT":
        return bptt_grads(net, x, y, phases)
    if alg == "BP":
        return bp_grads(net, x, y)
    if alg == "hEP":
        return hep_grads(net, x, y, phases, phases.hep_points)
    raise ValueError(f"unknown algorithm {alg!r}; accepted: {', '.join(ALGORITHMS)}")
