"""Ray job entrypoint for `aeflow train` (same flags):
`ray job submit --working-dir . -- python jobs/train.py ...`."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
