import sys

from graphsam_ext.cli import main

sys.exit(main())
