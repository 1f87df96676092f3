"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/train.py ...` (same flags as `aeflow train`)."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
