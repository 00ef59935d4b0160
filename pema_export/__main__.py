from pema_export.cli import main

raise SystemExit(main())
