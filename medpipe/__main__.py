from medpipe.cli import main

raise SystemExit(main())
