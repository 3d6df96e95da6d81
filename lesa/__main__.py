from lesa.cli import main

raise SystemExit(main())
