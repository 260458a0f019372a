"""``python -m keras_shufflenet.micro.firmware``: the firmware step for one run, core and kernel set."""

import sys

from keras_shufflenet.micro.firmware.step import main

if __name__ == "__main__":
    sys.exit(main())
