"""``python -m repexp.tokenlevel``: the token-level stage's command line (:mod:`.cli`)."""

import sys

from repexp.tokenlevel.cli import main

sys.exit(main())
