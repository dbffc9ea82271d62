"""Draw the LCA-RCNN framework figure, images/LCA-RCNN.png (used in the README).

    python images/make_framework_figure.py [--out images/LCA-RCNN.png]

a) an image x drives LCA for T_LCA steps over a dictionary D, settling to a sparse code a;
b) a copies into a free layer s_0 below the EP-trained conv layers; free phase (T1 steps, beta = 0)
   then nudged phases (T2 steps, +beta and -beta) give the EP weight update;
c) the nudged, settled copy layer fine-tunes the dictionary by a Hebbian step.
The input is a real handwritten digit (scikit-learn's bundled set) and the atoms are Gabor
patches drawn here, so the script needs no download and no trained model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

INK = "#222222"
LCA_COLOUR = "#4C72B0"
EP_COLOUR = "#DD8452"
NUDGE_COLOUR = "#C44E52"
DICT_COLOUR = "#55A868"


def gabor_atoms(n: int = 16, size: int = 9, seed: int = 0) -> np.ndarray:
    """n Gabor patches (n, size, size) in [-1, 1]: stand-ins for learned LCA atoms."""
    rng = np.random.default_rng(seed)
    r = np.arange(size) - size // 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    atoms = []
    for i in range(n):
        theta = np.pi * i / n
        freq = rng.uniform(0.15, 0.3)
        phase = rng.uniform(0, np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        g = np.exp(-(xx**2 + yy**2) / (2 * (size / 4) ** 2)) * np.cos(2 * np.pi * freq * u + phase)
        atoms.append(g / np.abs(g).max())
    return np.stack(atoms)


def digit_image() -> np.ndarray:
    """One 8x8 handwritten digit from scikit-learn, in [0, 1]."""
    from sklearn.datasets import load_digits

    return load_digits().images[3] / 16.0


def box(ax, xy, w, h, text, colour, fontsize=10, alpha=0.14):
    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=colour, ec=colour, alpha=alpha, lw=0))
    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc="none", ec=colour, lw=1.6))
    ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=fontsize,
            color=INK, linespacing=1.5)


def stack(ax, x, y, w, h, n, colour, label, sub=None):
    """A stack of n feature maps with its lower-left corner at (x, y)."""
    for i in reversed(range(n)):
        ax.add_patch(Rectangle((x + 0.07 * i, y + 0.07 * i), w, h, fc="white", ec=colour, lw=1.3))
    ax.add_patch(Rectangle((x, y), w, h, fc=colour, ec=colour, alpha=0.25, lw=0))
    ax.text(x + w / 2 + 0.035 * n, y + h + 0.07 * n + 0.12, label, ha="center", va="bottom",
            fontsize=11, color=INK)
    if sub:
        ax.text(x + w / 2, y - 0.12, sub, ha="center", va="top", fontsize=8.5, color="#555555")


def arrow(ax, start, end, colour=INK, style="-|>", lw=1.6, ls="-", rad=0.0, both=False):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="<|-|>" if both else style,
                                 mutation_scale=14, color=colour, lw=lw, linestyle=ls,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))


def draw(out: Path) -> Path:
    fig = Figure(figsize=(15, 5.0))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 15)
    ax.set_ylim(0.1, 5.1)
    ax.axis("off")

    # a) input and LCA -------------------------------------------------------------------
    ax.text(0.25, 4.75, "a)", fontsize=14, weight="bold", color=LCA_COLOUR)
    ax.imshow(digit_image(), cmap="gray_r", extent=(0.3, 1.7, 3.0, 4.4), zorder=2)
    ax.text(1.0, 4.55, "image $x$", ha="center", fontsize=11)
    arrow(ax, (1.8, 3.7), (2.35, 3.7))
    box(ax, (2.4, 2.85), 2.5, 1.75,
        "LCA, $T_{LCA}$ steps\n$u \\leftarrow u + \\frac{1}{\\tau}(b - u - a G)$\n"
        "$a = T_\\lambda(u)$,  $b = \\Phi \\star x$", LCA_COLOUR, fontsize=10.5)
    atoms = gabor_atoms()
    ax.text(3.65, 2.3, "dictionary $D$ (atoms $\\Phi$)", ha="center", fontsize=10,
            color=DICT_COLOUR)
    for i, atom in enumerate(atoms[:8]):
        x0 = 2.45 + i * 0.305
        ax.imshow(atom, cmap="RdBu_r", vmin=-1, vmax=1, extent=(x0, x0 + 0.27, 1.65, 1.92),
                  zorder=2)
    for i, atom in enumerate(atoms[8:]):
        x0 = 2.45 + i * 0.305
        ax.imshow(atom, cmap="RdBu_r", vmin=-1, vmax=1, extent=(x0, x0 + 0.27, 1.33, 1.60),
                  zorder=2)
    arrow(ax, (3.65, 2.0), (3.65, 2.8), colour=DICT_COLOUR)
    arrow(ax, (4.95, 3.7), (5.45, 3.7))
    stack(ax, 5.5, 3.2, 0.9, 0.9, 5, LCA_COLOUR, "sparse code $a$", "held fixed")

    # b) EP network ----------------------------------------------------------------------
    ax.text(6.95, 4.75, "b)", fontsize=14, weight="bold", color=EP_COLOUR)
    arrow(ax, (6.85, 3.7), (7.35, 3.7))
    stack(ax, 7.4, 3.2, 0.9, 0.9, 5, EP_COLOUR, "copy $s_0$",
          "$s_0 \\leftarrow \\sigma(a + W_1^\\top s_1)$")
    arrow(ax, (8.75, 3.7), (9.3, 3.7), both=True, colour=EP_COLOUR)
    ax.text(9.02, 3.85, "$W_1$", ha="center", fontsize=9.5)
    stack(ax, 9.35, 3.35, 0.65, 0.65, 6, EP_COLOUR, "conv $s_1$")
    arrow(ax, (10.5, 3.7), (11.0, 3.7), both=True, colour=EP_COLOUR)
    ax.text(10.75, 3.85, "$W_2$", ha="center", fontsize=9.5)
    stack(ax, 11.05, 3.45, 0.45, 0.45, 7, EP_COLOUR, "conv $s_2$")
    arrow(ax, (12.05, 3.7), (12.55, 3.7), both=True, colour=EP_COLOUR)
    ax.text(12.3, 3.85, "$W_3$", ha="center", fontsize=9.5)
    for k in range(10):
        ax.add_patch(Rectangle((12.62, 2.95 + 0.15 * k), 0.14, 0.13, fc="white", ec=EP_COLOUR))
    ax.text(12.69, 4.55, "output $\\hat y$", ha="center", fontsize=11)
    arrow(ax, (12.95, 3.7), (13.55, 3.7), colour=NUDGE_COLOUR, style="<|-")
    ax.text(14.2, 3.7, "nudge\n$-\\beta \\, \\partial L(\\hat y, y)$", ha="center",
            va="center", fontsize=10, color=NUDGE_COLOUR)

    box(ax, (7.3, 0.35), 6.9, 1.85,
        "EqProp: $s_l \\leftarrow \\sigma(\\partial \\Phi / \\partial s_l)$ (symmetric weights)\n"
        "free phase: $T_1$ steps at $\\beta = 0 \\rightarrow s_*$    "
        "nudged phases: $T_2$ steps at $\\pm\\beta \\rightarrow s_*^{\\pm\\beta}$\n"
        "$\\Delta W \\propto -\\frac{1}{2\\beta}\\,\\left(\\frac{\\partial \\Phi}{\\partial W}"
        "(s_*^{\\beta}) - \\frac{\\partial \\Phi}{\\partial W}(s_*^{-\\beta})\\right)$",
        EP_COLOUR, fontsize=10.5)

    # c) dictionary fine-tuning -----------------------------------------------------------
    ax.text(1.9, 0.62, "c)", fontsize=14, weight="bold", color=DICT_COLOUR)
    arrow(ax, (7.35, 3.3), (5.05, 1.62), colour=DICT_COLOUR, ls="--", rad=0.3)
    ax.text(2.45, 0.62,
            "fine-tune $D$ from the nudged copy layer $s_0^{\\beta}$:\n"
            "$\\Phi \\leftarrow \\mathrm{normalize}(\\Phi + \\eta\\, s_0^{\\beta} \\otimes "
            "(x - D(s_0^{\\beta})))$",
            ha="left", va="center", fontsize=9.5, color=INK)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, facecolor="white")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("LCA-RCNN.png"))
    print(draw(p.parse_args(argv).out))


if __name__ == "__main__":
    main()
