import sys

from relayd.cli.main import main

sys.exit(main())
