"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/compress.py ...` (same flags as `aeflow compress`)."""

import sys

from aeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["compress", *sys.argv[1:]]))
