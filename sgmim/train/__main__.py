import sys

from sgmim.train.run import main

sys.exit(main())
