"""Ray job entrypoint for `aeflow decompress` (same flags):
`ray job submit --working-dir . -- python jobs/decompress.py ...`."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["decompress", *sys.argv[1:]]))
