"""``python -m deeplight_bids`` runs the command-line interface."""

from deeplight_bids.cli.main import main

if __name__ == "__main__":
    main()
