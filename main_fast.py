"""Train an energy-based recurrent network with Equilibrium Propagation.

    python main_fast.py                      # EP CNN on scikit-learn's digits (offline default)
    python main_fast.py --help               # every flag, with its default
"""

from eplcanet.cli import parse_args
from eplcanet.experiment import run

if __name__ == "__main__":
    run(parse_args())
