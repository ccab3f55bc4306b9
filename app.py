"""bci_qif command-line entry point: ``python app.py [train|evaluate] ...``.

Without arguments it trains the default decoder (configs/default.yaml).
"""

import sys

from bci_qif.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
