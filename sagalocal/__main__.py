import sys

from sagalocal.cli import main

sys.exit(main())
