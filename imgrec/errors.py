"""The one exception type for user mistakes (bad config, missing data, bad checkpoint).

The CLI prints its message on one line and exits with code 2, without a traceback.
Messages say what was wrong and what to do.
"""


class UserError(Exception):
  pass
