"""The exit codes every command shares (shown by ``--help``); a leaf the commands import."""

EXIT_OK = 0
EXIT_FAILED = 1  # the operation ran and failed (fetch incomplete, query answered an error, ...)
EXIT_USAGE = 2  # bad flag, config key, CID, multiaddr or model: fix the command line
EXIT_UNREACHABLE = 3  # the peer or the local node could not be reached (or none runs)
EXIT_IN_USE = 4  # a port or the data dir is already used by another node
EXIT_INTERRUPTED = 130  # Ctrl-C in a one-shot command (a stopped `start` exits 0)

EXIT_CODES = f"""exit codes (every command):
  {EXIT_OK}    success (`start`: stopped cleanly by Ctrl-C / SIGTERM)
  {EXIT_FAILED}    the operation failed (e.g. a fetch could not complete, a query failed)
  {EXIT_USAGE}    bad input: flag, config key, CID, multiaddr, model
  {EXIT_UNREACHABLE}    the peer or local node could not be reached, or no node runs on the data dir
  {EXIT_IN_USE}    a port or the data dir is already used by another node
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C) before a one-shot command finished"""
