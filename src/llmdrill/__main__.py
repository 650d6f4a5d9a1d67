"""`python -m llmdrill`: the command line, for where the venv's `llmdrill` script is not on
PATH (a fault's restart command run by the watchdog or `llmdrill cleanup`)."""

from llmdrill.cli import main

if __name__ == "__main__":
    main()
