"""Ray job entrypoint for `aeflow eval` (same flags):
`ray job submit --working-dir . -- python jobs/eval.py ...`."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
