"""One module per `sockmesh` subcommand."""
