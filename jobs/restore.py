"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/restore.py ...` (same flags as `aeflow restore`)."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["restore", *sys.argv[1:]]))
