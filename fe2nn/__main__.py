import sys

from fe2nn.cli import main

sys.exit(main())
