import sys

from icuwatch.cli.main import main

sys.exit(main())
