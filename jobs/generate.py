"""Ray job entrypoint for `aeflow generate` (same flags):
`ray job submit --working-dir . -- python jobs/generate.py ...`."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
