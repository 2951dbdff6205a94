"""Click commands. Thin: parse options, build settings, call a component function."""
