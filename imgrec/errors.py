"""The one exception type for user mistakes (bad config, missing data, bad checkpoint), and the one for a
training run stopped by a signal.

The CLI prints either message on one line, without a traceback, and exits with code 2 for a UserError and
EXIT_PREEMPTED for Preempted. Messages say what was wrong and what to do.
"""

# `imgrec train` stopped by SIGTERM or SIGINT after saving a checkpoint at the step it had reached: rerun the
# same command to resume. 75 is EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"),
# apart from 0 (done), 1 (crash), 2 (UserError) and 128 + N (killed by signal N: a second signal exits so,
# at once, without waiting for the save).
EXIT_PREEMPTED = 75


class UserError(Exception):
  pass


class Preempted(Exception):
  """Training stopped by a signal after its checkpoint at the current step was written."""
