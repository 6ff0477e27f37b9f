#!/usr/bin/env python3
"""Container entrypoint (BIDS-Apps convention): ``run.py BIDS_DIR OUTPUT_DIR {participant,group} ...``."""

from deeplight_bids.cli.main import main

if __name__ == "__main__":
    main()
