"""Plan compiler, runner, services lifecycle, journal, cleanup and the watchdog."""
