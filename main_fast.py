"""Train an energy-based recurrent network with Equilibrium Propagation.

    python main_fast.py                      # EP CNN on scikit-learn's digits (offline default)
    python main_fast.py --help               # every flag, with its default
"""

import sys

from eplcanet.app.experiment import main

if __name__ == "__main__":
    sys.exit(main())
