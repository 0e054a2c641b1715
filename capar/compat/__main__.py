"""``python -m capar.compat SCRIPT|-m MODULE|-c CODE [ARGS...]``: run pyepics code on capar."""
import sys

from capar.compat import main

sys.exit(main())
