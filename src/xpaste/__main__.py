from xpaste.cli import main

raise SystemExit(main())
