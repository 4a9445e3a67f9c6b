"""`python -m batchgate_client ...` runs the `batchgate` command."""

from batchgate_client.cli import main

if __name__ == "__main__":
    main()
