"""Entry point of ``python -m lgiformer.data.synthetic``; the CLI itself is ``cli.py``."""
from lgiformer.data.synthetic.cli import main

raise SystemExit(main())
