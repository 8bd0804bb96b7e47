"""One module per ``r2d`` subcommand; each defines ``add_args(parser)`` and ``main(args)``."""
