import sys

from manymodels.cli import main

sys.exit(main())
