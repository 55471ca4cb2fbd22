import sys

from t2i_rl_bench.cli import main

sys.exit(main())
