import sys

from csidriver.cli import main

sys.exit(main())
