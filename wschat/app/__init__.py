"""The application: twistd options, the wiring of the service tree, its lifecycle."""
