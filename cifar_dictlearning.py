"""Learn a convolutional LCA dictionary with the Hebbian rule (eplcanet.app.dictlearning).

    python cifar_dictlearning.py             # scikit-image's photographs (offline default)
    python cifar_dictlearning.py --help      # every flag, with its default
"""

import sys

from eplcanet.app.dictlearning import main
from eplcanet.app.entry import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
