"""`python -m forgeml.serve RUN_DIR ...`: the same as `forgeml serve RUN_DIR ...`."""

from forgeml.cli.serve import main

raise SystemExit(main())
