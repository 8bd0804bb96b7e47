from r2d.cli import main

raise SystemExit(main())
