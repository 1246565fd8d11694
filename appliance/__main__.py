"""`python -m appliance ...`: the same as the installed `appliance` command."""

import sys

from appliance.cli import main

sys.exit(main())
