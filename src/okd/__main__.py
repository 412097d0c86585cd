"""`python -m okd` (what torchrun launches) is the `okd` command."""

from okd.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
