from eventlab.cli import main

raise SystemExit(main())
