"""The errors a user can meet, in one tree, each with the exit code it ends a command with.

    LlmdrillError                 exit 2: the input or the environment is not usable
     ├── ScenarioError            a scenario file is invalid (every problem, file:line:col)
     ├── EnvironmentProblem       a backend is unreachable or refuses us (preflight, apply)
     ├── SecretMissing            the API key's variable or file is not there
     ├── PluginError              an installed plugin cannot be loaded or clashes
     ├── StackError               the local stack cannot be installed or started
     │    └── DockerStackError    the same for the Docker engine and its images
     └── MonitoringError          Prometheus or Alertmanager answered what we cannot use
    Aborted (harness.runner)      exit 3: a signal or a guardrail stopped a run (not an error
                                  of the input; faults are reverted, reports written)

Run verdicts (passed 0, failed 1, error 2, aborted 3, inconclusive 4) are mapped in
`llmdrill.model.verdict`; this module maps failures that happen before or outside a run.
"""

from __future__ import annotations


class LlmdrillError(Exception):
    """Base of every error llmdrill reports to a user as a message, not a traceback."""

    exit_code = 2
