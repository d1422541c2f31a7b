import sys

from cartlytics.cli import main

sys.exit(main())
