import sys

from e2erec.cli import main

sys.exit(main())
