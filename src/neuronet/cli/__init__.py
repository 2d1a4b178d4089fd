"""The ``neuronet`` command line."""
