"""`python -m forgeml.serve RUN_DIR ...`: the same as `forgeml serve RUN_DIR ...`."""

from forgeml.serve.cli import main

raise SystemExit(main())
