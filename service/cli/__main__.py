"""python -m service.cli: the `calories` command without the installed script."""

import sys

from . import main

sys.exit(main())
