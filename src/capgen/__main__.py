import sys

from capgen.cli import main

sys.exit(main())
