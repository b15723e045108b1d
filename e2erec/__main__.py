import sys

from e2erec.cli import main

# Guarded: `multiprocessing`'s spawn start method (the baseline lane) re-imports the parent's main module.
if __name__ == "__main__":
    sys.exit(main())
