"""Ray job entrypoint for `aeflow restore` (same flags):
`ray job submit --working-dir . -- python jobs/restore.py ...`."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["restore", *sys.argv[1:]]))
