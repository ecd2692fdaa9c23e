"""`python -m llava_reward.cli ...` is `llava-reward ...` (e.g. under `accelerate launch -m llava_reward.cli train`)."""

import sys

from . import main


sys.exit(main())
