from forgeml.cli import main

raise SystemExit(main())
