import sys

from kapa.cli import main

sys.exit(main())
