from conjugacy.cli import main

raise SystemExit(main())
