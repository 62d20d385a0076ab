"""The ``torchair-plugin`` command line (``python -m torchair_plugin``): one module per subcommand.

Each subcommand module exposes ``add_<name>_subcommand(subparsers)``, which adds its parser and
sets its handler as ``func``; a handler takes the parsed arguments and returns the exit status.
``torchair_plugin.__main__`` lists the adders and is the only place that wires them together.
"""

EXIT_OK = 0
EXIT_UNUSABLE = 1  # doctor: nothing the plugin offers works on this machine
EXIT_BAD_INPUT = 2  # the argparse convention for a usage error
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE
