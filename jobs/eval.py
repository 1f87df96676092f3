"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/eval.py ...` (same flags as `aeflow eval`)."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
