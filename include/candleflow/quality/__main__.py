from candleflow.quality.cli import main

raise SystemExit(main())
