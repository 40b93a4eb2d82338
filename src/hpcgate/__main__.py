import sys

from hpcgate.cli import main

sys.exit(main())
