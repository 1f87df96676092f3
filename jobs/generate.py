"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/generate.py ...` (same flags as `aeflow generate`)."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
