import os
import sys

if "TORCHELASTIC_RUN_ID" in os.environ:  # a rank of torchrun, in a session of its own
    from sgmim.train.launch import rank_dies_with_launcher

    rank_dies_with_launcher()  # before the imports below, which take seconds

from sgmim.train.run import main  # noqa: E402

sys.exit(main())
