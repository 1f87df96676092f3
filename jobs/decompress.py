"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/decompress.py ...` (same flags as `aeflow decompress`)."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["decompress", *sys.argv[1:]]))
