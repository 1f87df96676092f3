"""Ray job entrypoint for `aeflow compress` (same flags):
`ray job submit --working-dir . -- python jobs/compress.py ...`."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["compress", *sys.argv[1:]]))
