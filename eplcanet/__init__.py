"""EPLCANet: Equilibrium Propagation for recurrent CNNs behind sparse-coding frontends.

Subpackages:
    eplcanet.sparse  sparse coding layers (LCA, matching pursuit), usable on their own.
    eplcanet.energy  energy-based networks, their closed-form dynamics and EP/BPTT estimators.
"""

__version__ = "0.1.0"
